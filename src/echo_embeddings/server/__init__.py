"""An OpenAI-compatible embeddings server: ``POST /v1/embeddings`` with echo pooling behind it.

``create_app(model)`` (``app.py``) is an importable ASGI app; ``echo-embeddings serve`` runs it under
uvicorn (``runner.py``). Requests are checked (``schemas.py``) before they reach the model's
:class:`~echo_embeddings.scheduler.BatchScheduler`, which merges concurrent requests into shared
batches; ``metrics.py`` renders the counters in Prometheus' text format. Install with
``pip install "echo-embeddings[serve]"``.
"""

from .app import ServerLimits, create_app, make_scheduler
from .runner import serve

__all__ = ["ServerLimits", "create_app", "make_scheduler", "serve"]
