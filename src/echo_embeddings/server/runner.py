"""Running the app under uvicorn, with a drained shutdown that exits 0.

With a scheduler made with ``worker_thread=False`` (what ``echo-embeddings serve`` does), uvicorn
runs in a second thread and the model runs in the main thread, where torch's CPU operations are
fastest (see :mod:`echo_embeddings.scheduler`). The main thread then also takes SIGTERM and Ctrl-C
and passes them to uvicorn.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

import uvicorn

from ..scheduler import BatchScheduler


class DrainingServer(uvicorn.Server):
    """uvicorn's server. On SIGTERM or Ctrl-C it stops accepting connections and finishes the
    requests in flight (then the app's shutdown drains the scheduler); uvicorn would then raise the
    signal again, so that the process dies of it, but a drained shutdown is a normal exit here."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def serve(
    app: Any, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", graceful_seconds: int = 60, scheduler: BatchScheduler | None = None
) -> None:
    """Serve ``app`` until SIGTERM or Ctrl-C; returns after the drain.

    ``scheduler``: the app's scheduler when it was made with ``worker_thread=False``; its worker
    then runs here, in the calling thread (the main thread), and uvicorn in another. Raises
    ``SystemExit`` with uvicorn's code if the server cannot start (a port in use).
    """
    server = DrainingServer(uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=graceful_seconds))
    if scheduler is None:
        server.run()
        return
    failure: list[int | str | None] = []

    def run_server() -> None:
        try:
            server.run()
        except SystemExit as exit_:  # uvicorn could not start
            failure.append(exit_.code)
        finally:
            scheduler.close(timeout=0)  # lets run_forever return once the queue is drained

    thread = threading.Thread(target=run_server, name="echo-embeddings-http")
    previous = {sig: signal.signal(sig, server.handle_exit) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        thread.start()
        scheduler.run_forever()
        thread.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failure:
        raise SystemExit(failure[0])
