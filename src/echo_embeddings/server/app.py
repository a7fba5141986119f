"""``create_app(model)``: the ASGI app behind ``echo-embeddings serve``.

- ``POST /v1/embeddings``: OpenAI's embeddings API. ``input`` is a string or a list of strings
  (token-id arrays are refused: the model reads text through its own templates); ``encoding_format``
  ``float`` or ``base64``; ``dimensions`` only where the leading dimensions are the strongest (the
  model ends in a PCA whitening); ``input_type`` ``query`` / ``document`` picks the template, or a
  ``:query`` / ``:document`` suffix on ``model`` for clients that cannot send extra fields. The
  ``model`` field never loads anything: the served model is fixed when the app is made. Vectors
  come back unit-length, as OpenAI's do; ``usage`` counts the inputs' tokens in the model's tokenizer.
- ``GET /v1/models``, ``GET /health`` (200 only once the model has embedded a warm-up text),
  ``GET /metrics`` (Prometheus text).

Every error has OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``), names the
item and the limit, and carries no stack trace. A bad request fails before it is queued, so it never
fails the requests it would have shared a batch with. A full queue answers 429 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from ..models.dimensions import truncation_note
from ..output_format import OutputFormat
from ..scheduler import DEFAULT_MAX_QUEUED_TEXTS, DEFAULT_RUN_SECONDS, BatchScheduler, QueueFullError, SchedulerClosedError
from .metrics import ServerMetrics
from .schemas import MODEL_SUFFIXES, RequestError, parse_request

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerLimits:
    """What one request may hold; past a limit the request is refused with the limit named."""

    max_inputs: int = 2048
    """Items in one request's ``input`` (OpenAI's own limit)."""
    max_input_chars: int = 32_768
    """Characters in one item (the model reads at most ``max_seq_length`` tokens of it anyway)."""
    max_body_bytes: int = 16 << 20
    """Bytes of one request body (413 past it)."""
    max_queued_texts: int = DEFAULT_MAX_QUEUED_TEXTS
    """Texts waiting for the model across all requests (429 past it)."""
    retry_after_seconds: int = 1
    """What a 429 tells the client to wait."""
    run_seconds: float = DEFAULT_RUN_SECONDS
    """What one model call of merged requests should take; the scheduler sets its token budget
    from the tokens/s it measures (:class:`~echo_embeddings.scheduler.BatchScheduler`'s
    ``run_seconds``): longer is more throughput and longer query latency (about two runs)."""
    max_run_tokens: int | None = None
    """A fixed token budget a model call instead (``max_tokens_per_run``); None: set by ``run_seconds``."""


def create_app(
    model: Any,
    *,
    served_model_name: str | None = None,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
    scheduler: BatchScheduler | None = None,
) -> FastAPI:
    """The server for ``model`` (a model from :func:`echo_embeddings.load`).

    Args:
        model: the model every request is embedded with; it is fixed for the app's life.
        served_model_name: the name ``/v1/models`` lists and responses carry (default: the model's
            source, or ``echo-embeddings``).
        api_key: when set, every request but ``/health`` needs ``Authorization: Bearer <api_key>``
            (compared in constant time); 401 without it.
        limits: :class:`ServerLimits`.
        scheduler: the :class:`~echo_embeddings.scheduler.BatchScheduler` of ``model`` that requests
            go to; the app closes it (draining it) at shutdown. Its own queue size and run budget
            apply, not those of ``limits`` (:func:`make_scheduler` builds one from ``limits``).
            Default: one made at startup from ``limits``, with its own worker thread. ``echo-embeddings serve`` passes one made with
            ``worker_thread=False`` and runs its worker in the main thread (:func:`serve`).
    """
    if scheduler is not None and scheduler.model is not model:
        raise ValueError("the scheduler runs another model than the one given to create_app")
    limits = limits or ServerLimits()
    name = served_model_name or str(getattr(model[0], "source", None) or "echo-embeddings")
    state: dict[str, Any] = {"ready": False, "scheduler": None}
    metrics = ServerMetrics()
    dimension = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else model.get_sentence_embedding_dimension()

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        running = scheduler if scheduler is not None else make_scheduler(model, limits)
        state["scheduler"] = running
        await running.aencode(["warm-up"], None)  # loads lazy parts and fills the prefix cache
        state["ready"] = True
        logger.info("serving %s (%d dimensions)", name, dimension)
        try:
            yield
        finally:
            state["ready"] = False
            await asyncio.to_thread(running.close)  # finishes what is queued

    app = FastAPI(title="echo-embeddings", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)

    app.add_middleware(_Guard, api_key=api_key, max_body_bytes=limits.max_body_bytes)

    @app.get("/health")
    async def health() -> JSONResponse:
        ready = state["ready"]
        return JSONResponse({"status": "ready" if ready else "starting"}, status_code=200 if ready else 503)

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "echo-embeddings"}]})

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        scheduler = state["scheduler"]
        return PlainTextResponse(metrics.render(scheduler.snapshot()), media_type="text/plain; version=0.0.4")

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> JSONResponse:
        started = time.perf_counter()
        try:
            response, texts, tokens = await embed(request)
        except RequestError as exc:
            metrics.record(exc.status, time.perf_counter() - started)
            headers = {"Retry-After": str(limits.retry_after_seconds)} if exc.status == 429 else None
            return _error(exc, headers)
        metrics.record(200, time.perf_counter() - started, texts, tokens)
        return JSONResponse(response)

    async def embed(request: Request) -> tuple[dict[str, Any], int, int]:
        body_bytes = await request.body()
        if len(body_bytes) > limits.max_body_bytes:
            raise RequestError(f"the body has {len(body_bytes)} bytes; at most {limits.max_body_bytes}", status=413, code="body_too_large")
        try:
            body = json.loads(body_bytes)
        except ValueError:
            raise RequestError("the body is not valid JSON") from None
        parsed, texts = parse_request(body, max_inputs=limits.max_inputs, max_input_chars=limits.max_input_chars)
        task = parsed.input_type
        for suffix, suffix_task in MODEL_SUFFIXES.items():
            if parsed.model and parsed.model.endswith(suffix):
                if task is not None and task != suffix_task:
                    raise RequestError(f"'model' ends in {suffix!r} but 'input_type' is {task!r}", param="input_type")
                task = suffix_task
        if parsed.dimensions is not None and parsed.dimensions != dimension:
            if parsed.dimensions > dimension:
                raise RequestError(f"'dimensions' {parsed.dimensions} is more than the model's {dimension}", param="dimensions")
            note = truncation_note(model, parsed.dimensions)
            if note:
                raise RequestError(f"'dimensions' {parsed.dimensions}: {note}; leave 'dimensions' out", param="dimensions")
        scheduler: BatchScheduler = state["scheduler"]
        if not state["ready"] or scheduler is None:
            raise RequestError("the model is still loading; retry shortly", status=503, kind="server_error", code="not_ready")
        counts = await asyncio.to_thread(scheduler.count_tokens, texts)  # the run's size and the usage
        try:
            future = scheduler.submit(texts, task, tokens=counts)
        except QueueFullError as exc:
            raise RequestError(str(exc), status=429, kind="rate_limit_error", code="queue_full") from None
        except SchedulerClosedError:
            raise RequestError("the server is shutting down", status=503, kind="server_error", code="shutting_down") from None
        except ValueError as exc:  # more texts than the whole queue holds
            raise RequestError(str(exc), param="input") from None
        vectors = OutputFormat(truncate_dim=parsed.dimensions, normalize=True).apply(await _unless_disconnected(request, future))
        tokens = sum(counts)
        data = [
            {"object": "embedding", "index": i, "embedding": base64.b64encode(v.tobytes()).decode() if parsed.encoding_format == "base64" else v.tolist()}
            for i, v in enumerate(vectors)
        ]
        response = {"object": "list", "data": data, "model": name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return response, len(texts), tokens

    return app


class _Guard:
    """The API key and the declared body size, checked before routing; an unexpected error becomes a
    500 in OpenAI's shape, without a stack trace. Plain ASGI: FastAPI's ``@app.middleware("http")``
    would add a task group and a body stream to every request, in the thread that must stay light."""

    def __init__(self, app: Any, *, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.expected = None if api_key is None else f"Bearer {api_key}".encode()
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.expected is not None and scope["path"] != "/health" and not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
            refused = RequestError("missing or wrong API key: send 'Authorization: Bearer <key>'", status=401, kind="authentication_error", code="invalid_api_key")
            await _error(refused)(scope, receive, send)
            return
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body_bytes:
            await _error(RequestError(f"the body has {int(length)} bytes; at most {self.max_body_bytes}", status=413, code="body_too_large"))(scope, receive, send)
            return
        started = False

        async def sending(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:  # never a stack trace in a response
            logger.exception("unexpected error on %s", scope["path"])
            if started:  # too late for an error response; the connection is closed
                raise
            await _error(RequestError("internal error; the server log has the details", status=500, kind="server_error"))(scope, receive, send)


def _error(exc: RequestError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def make_scheduler(model: Any, limits: ServerLimits, *, worker_thread: bool = True) -> BatchScheduler:
    """The scheduler the app sends requests to, sized by ``limits``."""
    return BatchScheduler(
        model, max_queued_texts=limits.max_queued_texts, max_tokens_per_run=limits.max_run_tokens, run_seconds=limits.run_seconds,
        worker_thread=worker_thread,
    )


async def _unless_disconnected(request: Request, future: Any) -> np.ndarray:
    """The future's vectors; if the client goes away first, the request is cancelled (dropped if it
    has not started; a batch it is in finishes for the others). The disconnect is an ASGI event
    awaited beside the future, not polled, so a server under load wakes only when something happens."""
    result = asyncio.ensure_future(asyncio.wrap_future(future))
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if result.done():
        return result.result()
    future.cancel()
    result.cancel()
    raise RequestError("the client disconnected", status=499, code="client_closed_request")


async def _disconnect(request: Request) -> None:
    """Returns when the client has disconnected (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
