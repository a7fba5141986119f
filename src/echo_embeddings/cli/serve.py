"""``echo-embeddings serve``: the OpenAI-compatible embeddings server under uvicorn.

    echo-embeddings serve smollm2-135m --strategy echo --port 8000
    curl http://127.0.0.1:8000/v1/embeddings -H 'Content-Type: application/json' -d '{"input": ["hello"]}'

Binds to 127.0.0.1 unless ``--host`` says otherwise. The API key comes from ``--api-key`` or
``$ECHO_EMBEDDINGS_API_KEY``. SIGTERM (or Ctrl-C) stops accepting, finishes the requests in flight
and exits 0.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..data import DataError
from ..scheduler import DEFAULT_MAX_QUEUED_TEXTS, DEFAULT_RUN_SECONDS
from .common import add_device, load_model

API_KEY_VARIABLE = "ECHO_EMBEDDINGS_API_KEY"


def add_parser(commands: Any) -> None:
    serve = commands.add_parser("serve", help="serve a model over HTTP with OpenAI's /v1/embeddings API")
    serve.add_argument("model", nargs="?", default=None, help="alias, id, folder, .gguf or saved echo model (default: the embedded smollm2-135m)")
    serve.add_argument("--strategy", default=None, help="preset or template (default: echo, or a saved model's own)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s; 0.0.0.0 exposes it to the network)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    serve.add_argument("--api-key", default=None, help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_VARIABLE}, else no key)")
    serve.add_argument("--served-model-name", default=None, help="the name /v1/models lists (default: the model's source)")
    serve.add_argument("--max-inputs", type=int, default=2048, help="items per request (default: %(default)s)")
    serve.add_argument("--max-input-chars", type=int, default=32_768, help="characters per item (default: %(default)s)")
    serve.add_argument("--max-queued-texts", type=int, default=DEFAULT_MAX_QUEUED_TEXTS, help="texts waiting before 429 (default: %(default)s)")
    serve.add_argument(
        "--run-seconds", type=float, default=DEFAULT_RUN_SECONDS, metavar="S",
        help="what one model call of merged requests should take; the token budget follows the measured speed: "
        "longer is more throughput and slower queries under load (default: %(default)s)",
    )
    serve.add_argument("--max-run-tokens", type=int, default=None, metavar="N", help="a fixed token budget a model call instead of --run-seconds")
    add_device(serve)
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"], help="uvicorn's log level (default: %(default)s)")


def run(args: argparse.Namespace) -> None:
    try:
        from ..server import ServerLimits, create_app, make_scheduler, serve
    except ImportError:
        raise DataError('serving needs FastAPI and uvicorn: pip install "echo-embeddings[serve]"') from None
    for flag in ("max_inputs", "max_input_chars", "max_queued_texts", "port", "max_run_tokens", "run_seconds"):
        if getattr(args, flag) is not None and not getattr(args, flag) > 0:
            raise DataError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    model = load_model(args.model, args.strategy, args.device, args.dtype, args.quantize)
    limits = ServerLimits(
        max_inputs=args.max_inputs, max_input_chars=args.max_input_chars, max_queued_texts=args.max_queued_texts,
        run_seconds=args.run_seconds, max_run_tokens=args.max_run_tokens,
    )
    scheduler = make_scheduler(model, limits, worker_thread=False)  # its worker is this, the main, thread: see serve()
    api_key = args.api_key or os.environ.get(API_KEY_VARIABLE) or None
    app = create_app(model, served_model_name=args.served_model_name, api_key=api_key, limits=limits, scheduler=scheduler)
    serve(app, host=args.host, port=args.port, log_level=args.log_level, scheduler=scheduler)
