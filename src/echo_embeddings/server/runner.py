"""Running the app under uvicorn, with a drained shutdown that exits 0."""

from __future__ import annotations

from types import FrameType
from typing import Any

import uvicorn


class DrainingServer(uvicorn.Server):
    """uvicorn's server. On SIGTERM or Ctrl-C it stops accepting connections and finishes the
    requests in flight (then the app's shutdown drains the scheduler); uvicorn would then raise the
    signal again, so that the process dies of it, but a drained shutdown is a normal exit here."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def serve(app: Any, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", graceful_seconds: int = 60) -> None:
    """Serve ``app`` until SIGTERM or Ctrl-C; returns after the drain."""
    DrainingServer(uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=graceful_seconds)).run()
