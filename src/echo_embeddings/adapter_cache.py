"""The adapters' model cache: one loaded model per configuration per process, and its scheduler.

LangChain and LlamaIndex create embedding objects freely (per chain, per index, per worker);
they all reach the model through :func:`shared_model`, which loads it once. Every call goes
through the model's :class:`~echo_embeddings.scheduler.BatchScheduler`: concurrent calls from
threads and asyncio tasks share batches instead of queueing one by one, and only the scheduler's
worker runs the model, so the device is never oversubscribed. Vectors come from the model's
``encode``, so a saved model's whole module list (a ``Dense`` projection, ``Normalize``, ...)
applies exactly as in sentence-transformers.
"""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .api import load
from .engine.settings import DEFAULT_BATCH_SIZE
from .late_chunking import Chunk
from .models.dimensions import truncation_note
from .models.sentence_transformer import EchoSentenceTransformer
from .output_format import OutputFormat
from .scheduler import UNIT_LENGTH, BatchScheduler

_CACHE: dict[str, SharedModel] = {}
_CACHE_LOCK = threading.Lock()


@dataclass
class SharedModel:
    """A loaded model and the scheduler every caller of it goes through."""

    model: EchoSentenceTransformer
    scheduler: BatchScheduler = field(init=False)

    _warned: set[int] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        self.scheduler = BatchScheduler(self.model)

    def check_truncation(self, truncate_dim: int | None) -> None:
        """Warn, once per size, when ``truncate_dim`` cuts dimensions this model was not made to
        lose (:func:`~echo_embeddings.models.dimensions.truncation_note`)."""
        if truncate_dim is None or truncate_dim in self._warned:
            return
        self._warned.add(truncate_dim)
        note = truncation_note(self.model, truncate_dim)
        if note:
            warnings.warn(f"truncate_dim={truncate_dim}: {note}", stacklevel=4)

    def encode(
        self,
        texts: Sequence[str],
        task: str | None,
        *,
        instruction: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        output: OutputFormat = UNIT_LENGTH,
        show_progress: bool = False,
    ) -> list[list[float]]:
        """Vectors as lists of Python numbers in ``output``'s format, in input order, through the
        shared batches. With a progress bar or a batch size of its own, the call runs alone on the
        scheduler's worker."""
        if show_progress or batch_size != self.scheduler.batch_size:
            options: dict[str, Any] = {"instruction": instruction} if instruction else {}
            vectors = self.scheduler.call(
                lambda: self.model.encode(
                    list(texts), task=task, batch_size=batch_size, show_progress_bar=show_progress, convert_to_numpy=True, **options,
                )
            ).result()
            return output.as_lists(vectors)
        # An empty instruction, like None, keeps the model's own (the adapters' fields default to it).
        return output.as_lists(self.scheduler.encode(texts, task, instruction=instruction or None))

    async def aencode(
        self, texts: Sequence[str], task: str | None, *, instruction: str | None = None, output: OutputFormat = UNIT_LENGTH
    ) -> list[list[float]]:
        """:meth:`encode` for asyncio: the event loop stays free while the batch runs, and waits for
        room when the scheduler's queue is full."""
        vectors = await self.scheduler.aencode(texts, task, instruction=instruction or None, wait=True)
        return output.as_lists(vectors)

    def encode_chunks(self, documents: Sequence[str], chunk_spans: Any = None, **options: Any) -> list[list[Chunk]]:
        """Each document's chunks with their vectors (``EchoSentenceTransformer.encode_chunks``),
        run on the scheduler's worker between batches."""
        documents = list(documents)
        return self.scheduler.call(lambda: self.model.encode_chunks(documents, chunk_spans, **options)).result()


def shared_model(model: str, strategy: str | None = None, device: str | None = None, **options: Any) -> SharedModel:
    """The process-wide model for this configuration, loaded on first use."""
    key = json.dumps([model, strategy, device, options], sort_keys=True, default=str)
    with _CACHE_LOCK:  # held while loading: a second caller waits instead of loading twice
        if key not in _CACHE:
            _CACHE[key] = SharedModel(load(model, strategy, device=device, **options))
        return _CACHE[key]
