"""``EchoEmbedding``: a LlamaIndex embedding that delegates everything to the echo-embeddings core."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Sequence
from typing import Any, Literal

from echo_embeddings import DEFAULT_BATCH_SIZE, DEFAULT_MODEL
from echo_embeddings.adapter_cache import SharedModel, shared_model
from echo_embeddings.late_chunking import DEFAULT_CHUNK_TOKENS, Chunk
from echo_embeddings.output_format import OutputFormat
from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.schema import BaseNode
from pydantic import Field, PrivateAttr, model_validator

LATE_CHUNK_KEY = "echo_chunking"
"""Node metadata set by ``EchoLateChunkNodeParser``: the node's embedding is a late-chunked vector."""

# LlamaIndex's default of 10 texts per call would cut the core's length sorting into tiny windows.
DEFAULT_EMBED_BATCH_SIZE = DEFAULT_BATCH_SIZE


class EchoEmbedding(BaseEmbedding):
    """Sentence embeddings from a causal LM with echo, token prepending or a baseline strategy.

    Example:
        .. code-block:: python

            from llama_index.core import Settings
            from llama_index.embeddings.echo import EchoEmbedding

            Settings.embed_model = EchoEmbedding(model_name="smollm2-135m", strategy="echo")
    """

    model_name: str = Field(default=DEFAULT_MODEL, description="Alias, Hugging Face id, folder, .gguf file or saved echo model.")
    strategy: str | None = Field(default=None, description="Preset (echo, mean, prompteol+tp, ...) or template string; None keeps a saved model's own, or echo.")
    device: str | None = Field(default=None, description="cuda, cpu, ...; CUDA when available by default.")
    embed_batch_size: int = Field(default=DEFAULT_EMBED_BATCH_SIZE, gt=0, description="Texts handed to the core per call; it sorts them by length.")
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, gt=0, description="Most texts per forward pass inside the core; its token budget usually decides.")
    normalize: bool = Field(default=True, description="Return unit-length vectors.")
    truncate_dim: int | None = Field(
        default=None, gt=0,
        description="Keep the first N dimensions (before normalising); quality holds only for a PCA-whitened or Matryoshka-trained model, a warning says so otherwise.",
    )
    precision: Literal["float32", "int8", "uint8", "binary", "ubinary"] = Field(
        default="float32", description="As sentence-transformers' encode(precision=...): int8/uint8 need precision_ranges; binary/ubinary pack 8 dimensions a byte.",
    )
    precision_ranges: list[list[float]] | None = Field(
        default=None, description="For int8/uint8: each dimension's [minimums, maximums] over a corpus sample (echo_embeddings.calibration_ranges).",
    )
    query_instruction: str | None = Field(default=None, description="Instruction for the query template; None keeps the model's own.")
    text_instruction: str | None = Field(default=None, description="Instruction for the document template, if it has one; None keeps the model's own.")
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra core options: output_layer, tp_layers, max_seq_length, dtype ...")

    _output: OutputFormat = PrivateAttr()

    @model_validator(mode="after")
    def _check_output(self) -> EchoEmbedding:
        """Truncation and precision are checked when the object is made, not at the first call."""
        self._output = OutputFormat(self.truncate_dim, self.normalize, self.precision, self.precision_ranges)
        return self

    @classmethod
    def class_name(cls) -> str:
        return "EchoEmbedding"

    def _encoder(self) -> SharedModel:
        # Never stored on the object: pickles stay small and each process loads lazily, once.
        shared = shared_model(self.model_name, self.strategy, self.device, **self.model_kwargs)
        shared.check_truncation(self.truncate_dim)
        return shared

    def _embed(self, texts: list[str], task: str, instruction: str | None) -> list[Embedding]:
        return self._encoder().encode(texts, task, instruction=instruction, batch_size=self.batch_size, output=self._output)

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._embed([query], "query", self.query_instruction)[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._embed([text], "document", self.text_instruction)[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._embed(texts, "document", self.text_instruction) if texts else []

    def late_chunks(
        self,
        texts: Sequence[str],
        *,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        chunking: str = "late",
        window_overlap: int | None = None,
        show_progress: bool = False,
    ) -> list[list[Chunk]]:
        """Each text's chunks (``text``, ``start``, ``end``, ``embedding``) with this configuration's
        model, batch size and normalisation: the core's ``encode_chunks``."""
        return self._encoder().encode_chunks(
            list(texts), chunk_tokens=chunk_tokens, chunking=chunking, window_overlap=window_overlap,
            batch_size=self.batch_size, normalize_embeddings=self.normalize, show_progress_bar=show_progress,
        )

    async def _aembed(self, texts: list[str], task: str, instruction: str | None) -> list[Embedding]:
        # The event loop stays free; concurrent calls share the model's batches through its scheduler.
        if self.batch_size != DEFAULT_BATCH_SIZE:
            return await asyncio.to_thread(self._embed, texts, task, instruction)  # a call of its own, with its batch size
        return await self._encoder().aencode(texts, task, instruction=instruction, output=self._output)

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return (await self._aembed([query], "query", self.query_instruction))[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return (await self._aembed([text], "document", self.text_instruction))[0]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await self._aembed(texts, "document", self.text_instruction) if texts else []

    def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        """As a pipeline step: embed the nodes, except those that already carry a late-chunked
        vector (from ``EchoLateChunkNodeParser``), which keep it; a warning says so."""
        late = [n for n in nodes if n.embedding is not None and n.metadata.get(LATE_CHUNK_KEY)]
        if late:
            warnings.warn(
                f"{len(late)} of {len(nodes)} nodes already carry late-chunked vectors from EchoLateChunkNodeParser and keep them; "
                "no embed model is needed after it in the pipeline",
                stacklevel=2,
            )
        rest = [n for n in nodes if not (n.embedding is not None and n.metadata.get(LATE_CHUNK_KEY))]
        if rest:
            super().__call__(rest, **kwargs)
        return nodes

    async def acall(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        return await asyncio.to_thread(self.__call__, nodes, **kwargs)
