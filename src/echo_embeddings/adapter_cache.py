"""The adapters' model cache: one loaded model per configuration per process.

LangChain and LlamaIndex create embedding objects freely (per chain, per index, per worker);
they all reach the model through :func:`shared_model`, which loads it once and serialises
access to it, so concurrent calls neither duplicate weights nor oversubscribe the device.
Vectors come from the model's ``encode``, so a saved model's whole module list (a ``Dense``
projection, ``Normalize``, ...) applies exactly as in sentence-transformers.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .api import load
from .engine.settings import DEFAULT_BATCH_SIZE
from .late_chunking import Chunk
from .models.sentence_transformer import EchoSentenceTransformer

_CACHE: dict[str, SharedModel] = {}
_CACHE_LOCK = threading.Lock()


@dataclass
class SharedModel:
    """A loaded model plus the lock that serialises its forwards."""

    model: EchoSentenceTransformer
    lock: threading.Lock = field(default_factory=threading.Lock)

    def encode(
        self,
        texts: Sequence[str],
        task: str | None,
        *,
        instruction: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        normalize: bool = True,
        show_progress: bool = False,
    ) -> list[list[float]]:
        """Vectors as lists of Python floats, in input order."""
        options: dict[str, Any] = {"instruction": instruction} if instruction else {}
        with self.lock:
            vectors = self.model.encode(
                list(texts), task=task, batch_size=batch_size, normalize_embeddings=normalize,
                show_progress_bar=show_progress, convert_to_numpy=True, **options,
            )
        return vectors.tolist()

    def encode_chunks(self, documents: Sequence[str], chunk_spans: Any = None, **options: Any) -> list[list[Chunk]]:
        """Each document's chunks with their vectors: ``EchoSentenceTransformer.encode_chunks``."""
        with self.lock:
            return self.model.encode_chunks(list(documents), chunk_spans, **options)


def shared_model(model: str, strategy: str | None = None, device: str | None = None, **options: Any) -> SharedModel:
    """The process-wide model for this configuration, loaded on first use."""
    key = json.dumps([model, strategy, device, options], sort_keys=True, default=str)
    with _CACHE_LOCK:  # held while loading: a second caller waits instead of loading twice
        if key not in _CACHE:
            _CACHE[key] = SharedModel(load(model, strategy, device=device, **options))
        return _CACHE[key]
