"""Micro-batching: encode calls that arrive at the same time share the engine's batches.

A :class:`BatchScheduler` owns one worker thread that is the only one to run its model. Callers
(threads, asyncio tasks, the LangChain and LlamaIndex adapters, the HTTP server) submit texts and
get a future. While the worker runs, new requests queue up; each time it is free it takes a *run*
of queued requests and makes one ``model.encode`` call of all their texts: they are sorted by
token count together and cut into token-budget batches, with the prefix cache and packing as
usual. Each caller then gets its own rows back, in its own order. A text's vector does not depend
on the batch it shared (the engine's batch invariance), so a caller's vectors equal a lone
``model.encode`` of the same texts.

A run is one ``model.encode`` call of a token budget of the texts' own tokens, for requests that
share a task and an instruction (the engine runs one template set a call), so a request that
arrives while the worker is busy waits for one short run, not for everything queued before it.
The budget is set in time: it adapts so that a full run takes about ``run_seconds`` (0.5 s by
default) on whatever machine and model it runs, from the tokens/s of the runs so far (or it is a
fixed ``max_tokens_per_run``). Runs alternate between two kinds when *small* requests (at most
``small_request_texts`` texts, one by default: a RAG query) are waiting:

1. a run that takes the small requests first (half the budget at most), in arrival order, whatever
   their task or instruction (one ``model.encode`` per template set), and fills the rest of the
   budget with the other requests of their template sets: a one-sentence query waits for at most
   the run in progress and this one, even behind small requests of the other template, and the
   run is still a full one;
2. then a run in plain arrival order from the oldest request, small or not, so large requests
   get at least every other run and nothing waits forever.

The budget trades latency for throughput: a longer run amortises the per-call cost (a model call
streams all the weights once, whatever its size) but holds a query back longer, for about two
runs. In tokens the right budget differs by machine and model (on 2 CPU cores, 512 tokens of
SmolLM2 echo took about 1 s on one CPU and over 2 s on another); in seconds it does not.
``benchmarks/serve_load.py`` measures both at several budgets.

The queue is bounded in texts: a request that would overflow it fails at once with
:class:`QueueFullError` (or, with ``wait=True``, waits for room). Inputs are checked before they
are queued, so one bad request never fails the others; a request whose future was cancelled (a
client that went away) is dropped before it is run. ``close()`` stops new requests, finishes the
queued ones and stops the worker.

The worker is a thread the scheduler starts, unless it is made with ``worker_thread=False``: then
the owner runs :meth:`run_forever` in a thread of its own choosing. ``echo-embeddings serve`` runs
it in the process's main thread and the HTTP server in another: with the OpenMP build of torch,
the many small operations of a forward pass run slower when they are started from a thread other
than the main one (measured on 2 CPU cores: about 0.7 of the offline throughput from a started
thread, 0.92-0.97 from the main thread).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .engine.inputs import Task, check_texts, normalize_task
from .engine.settings import DEFAULT_BATCH_SIZE, DEFAULT_BATCH_TOKENS
from .output_format import OutputFormat

DEFAULT_MAX_QUEUED_TEXTS = 16_384
"""Texts waiting at most (about 50 MB of text at 3 KB a text); past it requests are refused."""
DEFAULT_MAX_TEXTS_PER_RUN = 1_024
"""Texts the worker takes into one run at most (the token budget usually stops a run first)."""
DEFAULT_RUN_SECONDS = 0.5
"""What a full run should take: a one-text query under load waits about two runs."""
DEFAULT_SMALL_REQUEST_TEXTS = 1
"""Requests of at most this many texts go first in every other run (a RAG query is one text)."""
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RUN_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
UNIT_LENGTH = OutputFormat(normalize=True)
MIN_RUN_TOKENS = 16
"""The adaptive budget's floor (a run's first request always goes, whatever its size)."""


class QueueFullError(RuntimeError):
    """The scheduler's queue has no room for this request; retry later (an HTTP server answers 429)."""


class SchedulerClosedError(RuntimeError):
    """The scheduler was closed; it takes no new requests."""


@dataclass
class Histogram:
    """Cumulative counts per upper bound, Prometheus style."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.bounds)

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1


@dataclass
class SchedulerStats:
    """What the scheduler did since it started (read under its lock with :meth:`BatchScheduler.snapshot`)."""

    requests: int = 0
    texts: int = 0
    runs: int = 0
    rejected: int = 0
    cancelled: int = 0
    failed: int = 0
    run_texts: Histogram = field(default_factory=lambda: Histogram(RUN_SIZE_BUCKETS))
    latency_seconds: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    run_seconds: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    """Time of each run's ``model.encode``: its sum over the elapsed time is how busy the model was."""
    run_tokens: int = 0
    """The token budget of a run now (it adapts to ``run_seconds`` unless it was fixed)."""


@dataclass
class _Request:
    texts: list[str]
    task: Task | None
    instruction: str | None
    tokens: int
    future: Future
    queued_at: float


@dataclass
class _Call:
    function: Callable[[], Any]
    future: Future


class BatchScheduler:
    """One worker thread that runs ``model.encode`` for every caller, merging concurrent requests.

    Args:
        model: an echo ``SentenceTransformer`` (from :func:`echo_embeddings.load`); any object
            with sentence-transformers' ``encode`` works.
        max_queued_texts: most texts waiting; a request that would pass it is refused
            (:class:`QueueFullError`) or, with ``wait=True``, waits for room.
        max_texts_per_run: most texts the worker merges into one run.
        max_tokens_per_run: a fixed budget: most tokens (the texts' own, counted with the model's
            tokenizer) in one run; its first request always goes. None (default): the budget
            adapts to ``run_seconds``, starting from an eighth of the engine's batch token budget
            (``model[0].engine.batch_token_budget``: 256 on a CPU, 4,096 on a GPU; 256 for a model
            without an engine) and staying between 16 tokens and four engine batches.
        run_seconds: what a full run should take when the budget adapts (None: the starting
            budget stays fixed). After each full run (at least half its budget taken), the
            budget becomes the tokens/s measured so far (a moving mean) times ``run_seconds``;
            since a call also has a fixed cost, this settles where a run takes ``run_seconds``.
        small_request_texts: requests of at most this many texts go first in every other run
            while they wait (0: plain arrival order).
        batch_size: the ``batch_size`` cap of each ``encode`` (the token budget decides below it).
        worker_thread: start a worker thread at the first request (default). False: nothing runs
            until the owner calls :meth:`run_forever` in a thread of its choosing (the main thread
            runs torch's CPU operations fastest).
    """

    def __init__(
        self,
        model: Any,
        *,
        max_queued_texts: int = DEFAULT_MAX_QUEUED_TEXTS,
        max_texts_per_run: int = DEFAULT_MAX_TEXTS_PER_RUN,
        max_tokens_per_run: int | None = None,
        run_seconds: float | None = DEFAULT_RUN_SECONDS,
        small_request_texts: int = DEFAULT_SMALL_REQUEST_TEXTS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        worker_thread: bool = True,
    ) -> None:
        given = {"max_queued_texts": max_queued_texts, "max_texts_per_run": max_texts_per_run, "max_tokens_per_run": max_tokens_per_run, "run_seconds": run_seconds}
        for name, value in given.items():
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if small_request_texts < 0:
            raise ValueError(f"small_request_texts must not be negative, got {small_request_texts}")
        self.model = model
        self.max_queued_texts = max_queued_texts
        self.max_texts_per_run = max_texts_per_run
        self.max_tokens_per_run = max_tokens_per_run
        self.run_seconds = None if max_tokens_per_run is not None else run_seconds
        engine_budget = _engine_budget(model)
        self._budget_bounds = (MIN_RUN_TOKENS, 4 * engine_budget)
        self._tokens_per_second: float | None = None  # moving mean over full runs, for the adaptive budget
        self.small_request_texts = small_request_texts
        self.batch_size = batch_size
        self.stats = SchedulerStats(run_tokens=max_tokens_per_run or engine_budget // 8)
        self._queue: deque[_Request | _Call] = deque()
        self._queued_texts = 0
        self._small_turn = False  # whether the last run took the small requests first
        self._closed = False
        self._condition = threading.Condition()
        self._worker_thread = worker_thread
        self._worker: threading.Thread | None = None
        self._owner: threading.Thread | None = None  # the thread run_forever works in, once it has started
        self._drained = threading.Event()  # set when run_forever has finished the queue after close()

    # -- submitting -------------------------------------------------------------------------
    @property
    def queued_texts(self) -> int:
        """Texts waiting now (the queue depth)."""
        with self._condition:
            return self._queued_texts

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Each text's own tokens in the model's tokenizer (no template, no special tokens): what a
        run's size is counted in, and what the server reports as ``usage``. A model without a
        tokenizer counts a token per four characters."""
        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is None:
            return [len(t) // 4 + 1 for t in texts]
        return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def submit(
        self,
        texts: Sequence[str],
        task: str | None = None,
        *,
        instruction: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
        tokens: Sequence[int] | None = None,
    ) -> Future:
        """Queue ``texts`` and return a future of their float32 vectors ``[len(texts), dim]``, in order.

        ``tokens``: the texts' :meth:`count_tokens`, when the caller has counted them already.
        Raises at once, before queueing: ``TypeError`` for a non-string item (naming its index),
        ``ValueError`` for an unknown task or a request larger than the whole queue,
        :class:`QueueFullError` when the queue has no room (unless ``wait``; then after
        ``timeout`` seconds), :class:`SchedulerClosedError` after :meth:`close`.
        """
        texts = check_texts(texts)
        task = normalize_task(task)
        if instruction is not None and not isinstance(instruction, str):
            raise TypeError(f"instruction must be a str, got {type(instruction).__name__}")
        future: Future = Future()
        if not texts:
            future.set_result(np.empty((0, self._dimension()), dtype=np.float32))
            return future
        if len(texts) > self.max_queued_texts:
            raise ValueError(f"{len(texts)} texts in one request exceed the queue's {self.max_queued_texts}; send them in smaller requests")
        counted = sum(self.count_tokens(texts) if tokens is None else tokens)
        request = _Request(texts, task, instruction, counted, future, time.perf_counter())
        self._enqueue(request, len(texts), wait, timeout)
        return future

    def call(self, function: Callable[[], Any]) -> Future:
        """Run ``function()`` on the worker thread, between batches (for other work on the same
        model, such as late chunking, that must not run beside the batches)."""
        future: Future = Future()
        self._enqueue(_Call(function, future), 0, True, None)
        return future

    def _enqueue(self, item: _Request | _Call, texts: int, wait: bool, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while True:
                if self._closed:
                    raise SchedulerClosedError("the scheduler is closed and takes no new requests")
                if self._queued_texts + texts <= self.max_queued_texts:
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if not wait or (left is not None and left <= 0):
                    self.stats.rejected += 1
                    raise QueueFullError(
                        f"the queue holds {self._queued_texts} texts and takes at most {self.max_queued_texts}; "
                        f"this request of {texts} does not fit: retry later"
                    )
                self._condition.wait(left)
            self._queue.append(item)
            self._queued_texts += texts
            if isinstance(item, _Request):
                self.stats.requests += 1
                self.stats.texts += texts
            self._condition.notify_all()
            if self._worker is None and self._worker_thread:
                self._worker = threading.Thread(target=self._run, name="echo-embeddings-scheduler", daemon=True)
                self._worker.start()

    def encode(
        self, texts: Sequence[str], task: str | None = None, *, instruction: str | None = None, normalize: bool = False, wait: bool = True
    ) -> np.ndarray:
        """:meth:`submit` and wait for the vectors (unit length with ``normalize``). Waits for room
        in the queue by default, as a blocking call would."""
        vectors = self.submit(texts, task, instruction=instruction, wait=wait).result()
        return UNIT_LENGTH.apply(vectors) if normalize else vectors

    async def aencode(
        self, texts: Sequence[str], task: str | None = None, *, instruction: str | None = None, normalize: bool = False, wait: bool = False
    ) -> np.ndarray:
        """:meth:`submit` from asyncio without blocking the event loop. A full queue raises
        :class:`QueueFullError` unless ``wait``; a cancelled task drops its request."""
        if wait:
            future = await asyncio.to_thread(self.submit, texts, task, instruction=instruction, wait=True)
        else:
            future = self.submit(texts, task, instruction=instruction)
        vectors = await asyncio.wrap_future(future)
        return UNIT_LENGTH.apply(vectors) if normalize else vectors

    # -- the worker ---------------------------------------------------------------------------
    def _take(self) -> list[_Request | _Call] | None:
        """The next run's requests (or one call), waiting for work; None once closed and drained."""
        with self._condition:
            while not self._queue:
                if self._closed:
                    return None
                self._condition.wait()
            if isinstance(self._queue[0], _Call):
                return [self._queue.popleft()]
            waiting: list[_Request] = []  # the requests ahead of the first call (a call is not overtaken)
            for item in self._queue:
                if isinstance(item, _Call):
                    break
                waiting.append(item)
            small = [r for r in waiting if len(r.texts) <= self.small_request_texts]
            self._small_turn = bool(small) and not self._small_turn
            budget = self.stats.run_tokens
            if self._small_turn:  # the small requests of every template set first, then the others of their sets
                taken = _fill(small, [], budget // 2, self.max_texts_per_run, None)
                groups = {(r.task, r.instruction) for r in taken}
                taken = _fill(waiting, taken, budget, self.max_texts_per_run, groups)
            else:  # arrival order, the oldest request's template set
                taken = _fill(waiting, [], budget, self.max_texts_per_run, {(waiting[0].task, waiting[0].instruction)})
            texts = sum(len(r.texts) for r in taken)
            chosen = {id(r) for r in taken}
            self._queue = deque(item for item in self._queue if id(item) not in chosen)
            self._queued_texts -= texts
            self._condition.notify_all()
            return taken  # type: ignore[return-value]

    def run_forever(self) -> None:
        """Be the worker in the calling thread, until :meth:`close` and the queue is drained (for a
        scheduler made with ``worker_thread=False``; ``echo-embeddings serve`` calls it in the main
        thread while the HTTP server runs in another)."""
        if self._worker_thread:
            raise RuntimeError("this scheduler starts its own worker thread; make it with worker_thread=False to run the worker here")
        with self._condition:
            if self._owner is not None:
                raise RuntimeError("run_forever is already running in another thread")
            self._owner = threading.current_thread()
        try:
            self._run()
        finally:
            self._drained.set()

    def _run(self) -> None:
        while (taken := self._take()) is not None:
            if isinstance(taken[0], _Call):
                call = taken[0]
                if call.future.set_running_or_notify_cancel():  # type: ignore[union-attr]
                    try:
                        call.future.set_result(call.function())  # type: ignore[union-attr]
                    except BaseException as error:  # handed to the caller
                        call.future.set_exception(error)  # type: ignore[union-attr]
                continue
            live = [r for r in taken if r.future.set_running_or_notify_cancel()]  # type: ignore[union-attr]
            with self._condition:
                self.stats.cancelled += len(taken) - len(live)
            groups: dict[tuple[Task | None, str | None], list[_Request]] = {}
            for request in live:
                groups.setdefault((request.task, request.instruction), []).append(request)  # type: ignore[union-attr, arg-type]
            seconds = sum(self._run_group(task, instruction, requests) for (task, instruction), requests in groups.items())
            if self.run_seconds is not None and seconds > 0:
                self._adapt(sum(r.tokens for r in live), seconds)

    def _adapt(self, tokens: int, seconds: float) -> None:
        """After a run of ``tokens`` that took ``seconds``: if it was full (half its budget or
        more; a short queue says nothing of the rate), the budget becomes the tokens/s so far
        times ``run_seconds``."""
        with self._condition:
            if tokens * 2 < self.stats.run_tokens:
                return
            rate = tokens / seconds
            self._tokens_per_second = rate if self._tokens_per_second is None else (self._tokens_per_second + rate) / 2
            low, high = self._budget_bounds
            self.stats.run_tokens = min(high, max(low, round(self._tokens_per_second * self.run_seconds)))  # type: ignore[operator]

    def _run_group(self, task: Task | None, instruction: str | None, requests: list[_Request]) -> float:
        """One ``encode`` of the requests' texts, each request's rows to its future; the seconds it took."""
        texts = [t for r in requests for t in r.texts]
        options: dict[str, Any] = {"instruction": instruction} if instruction is not None else {}
        started = time.perf_counter()
        try:
            vectors = self.model.encode(
                texts, task=task, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False, **options
            )
        except BaseException as error:  # every caller of the group learns why
            with self._condition:
                self.stats.failed += len(requests)
            for request in requests:
                request.future.set_exception(error)
            return 0.0
        vectors = np.asarray(vectors, dtype=np.float32)
        done = time.perf_counter()
        start = 0
        with self._condition:
            self.stats.runs += 1
            self.stats.run_texts.observe(len(texts))
            self.stats.run_seconds.observe(done - started)
            for request in requests:
                self.stats.latency_seconds.observe(done - request.queued_at)
        for request in requests:
            request.future.set_result(vectors[start : start + len(request.texts)])
            start += len(request.texts)
        return done - started

    # -- life cycle -----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The stats and the queue depth, consistent with each other (for a metrics endpoint)."""
        with self._condition:
            stats = self.stats
            return {
                "requests": stats.requests, "texts": stats.texts, "runs": stats.runs, "rejected": stats.rejected,
                "cancelled": stats.cancelled, "failed": stats.failed, "queued_texts": self._queued_texts, "run_tokens": stats.run_tokens,
                **{name: _parts(getattr(stats, name)) for name in ("run_texts", "run_seconds", "latency_seconds")},
            }

    def close(self, timeout: float | None = None) -> None:
        """Take no new requests, finish the queued ones, stop the worker (waiting up to ``timeout``
        seconds for it; with ``worker_thread=False``, for :meth:`run_forever` to return if it runs
        in another thread)."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
            worker = self._worker
        if worker is not None:
            worker.join(timeout)
        elif self._owner is not None and threading.current_thread() is not self._owner:
            self._drained.wait(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def _dimension(self) -> int:
        get = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get())


def _fill(
    candidates: list[_Request], taken: list[_Request], tokens: int, texts: int, groups: set[tuple[Task | None, str | None]] | None
) -> list[_Request]:
    """``taken`` and then, in order, the ``candidates`` of ``groups`` (any, for None) that fit in
    ``tokens`` and ``texts`` with them (the first always goes; a smaller one behind a request that
    does not fit still may)."""
    taken = list(taken)
    chosen = {id(r) for r in taken}
    used_tokens, used_texts = sum(r.tokens for r in taken), sum(len(r.texts) for r in taken)
    for request in candidates:
        if id(request) in chosen or (groups is not None and (request.task, request.instruction) not in groups):
            continue
        if taken and (used_texts + len(request.texts) > texts or used_tokens + request.tokens > tokens):
            continue
        taken.append(request)
        used_tokens += request.tokens
        used_texts += len(request.texts)
    return taken


def _parts(histogram: Histogram) -> tuple:
    """A copy of a histogram as (bounds, counts, sum, count)."""
    return histogram.bounds, list(histogram.counts), histogram.total, histogram.count


def _engine_budget(model: Any) -> int:
    """The padded tokens of one engine batch of an echo model; 2,048 (the CPU default) otherwise."""
    try:
        return int(model[0].engine.batch_token_budget)
    except (TypeError, IndexError, KeyError, AttributeError):
        return DEFAULT_BATCH_TOKENS["cpu"]
