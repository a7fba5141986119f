"""One loaded model per configuration per process, for the framework adapters.

LangChain and LlamaIndex create embedding objects freely (per chain, per index, per worker);
they all reach the model through :func:`shared_encoder`, which loads it once and serialises
access to it, so concurrent calls neither duplicate weights nor oversubscribe the device.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sentence_transformers import SentenceTransformer

_CACHE: dict[str, SharedEncoder] = {}
_CACHE_LOCK = threading.Lock()


@dataclass
class SharedEncoder:
    """A loaded model plus the lock that serialises its forwards."""

    model: SentenceTransformer
    lock: threading.Lock = field(default_factory=threading.Lock)

    def encode(
        self,
        texts: Sequence[str],
        task: str | None,
        *,
        instruction: str | None = None,
        batch_size: int = 256,
        normalize: bool = True,
        show_progress: bool = False,
    ) -> list[list[float]]:
        """Vectors as lists of Python floats, in input order."""
        embedder = self.model[0].embedder
        with self.lock:
            vectors = embedder.encode(
                texts, task, instruction=instruction or None, batch_size=batch_size, normalize=normalize, show_progress_bar=show_progress
            )
        return vectors.tolist()


def shared_encoder(model: str, strategy: str | None = None, device: str | None = None, **options: Any) -> SharedEncoder:
    """The process-wide encoder for this configuration, loaded on first use."""
    from . import load

    key = json.dumps([model, strategy, device, options], sort_keys=True, default=str)
    with _CACHE_LOCK:  # held while loading: a second caller waits instead of loading twice
        if key not in _CACHE:
            _CACHE[key] = SharedEncoder(load(model, strategy, device=device, **options))
        return _CACHE[key]
