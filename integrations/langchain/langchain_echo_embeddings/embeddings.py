"""``EchoEmbeddings``: a LangChain ``Embeddings`` that delegates everything to the echo-embeddings core."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any, Literal

from echo_embeddings import DEFAULT_BATCH_SIZE, DEFAULT_MODEL
from echo_embeddings.adapter_cache import SharedModel, shared_model
from echo_embeddings.late_chunking import DEFAULT_CHUNK_TOKENS, Chunk
from echo_embeddings.output_format import OutputFormat
from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator


class EchoEmbeddings(BaseModel, Embeddings):
    """Sentence embeddings from a causal LM with echo, token prepending or a baseline strategy.

    Example:
        .. code-block:: python

            from langchain_echo_embeddings import EchoEmbeddings

            embeddings = EchoEmbeddings(model="smollm2-135m", strategy="echo")
            vectors = embeddings.embed_documents(["Echo repeats the text."])
            query = embeddings.embed_query("What does echo do?")
    """

    model: str = Field(default_factory=lambda: os.environ.get("ECHO_EMBEDDINGS_MODEL", DEFAULT_MODEL))
    """Alias (``smollm2-135m``, ``gemma3-270m``), Hugging Face id, local folder, ``.gguf`` file or
    saved echo model. Defaults to ``$ECHO_EMBEDDINGS_MODEL`` or the embedded SmolLM2."""
    strategy: str | None = None
    """Preset name (``echo``, ``mean``, ``prompteol+tp``, ...) or a template string; ``None`` keeps
    a saved model's own strategy, or ``echo``."""
    device: str | None = None
    """``cuda``, ``cpu``, ...; by default CUDA when available."""
    batch_size: int = DEFAULT_BATCH_SIZE
    """Most texts per forward pass; the core sorts them by token count and its token budget
    usually decides."""
    normalize: bool = True
    """Return unit-length vectors, so dot product equals cosine similarity."""
    truncate_dim: int | None = None
    """Keep the first N dimensions (before normalising). Quality holds only for a model that ends
    in PCA whitening or was trained with a Matryoshka loss; otherwise a warning says so."""
    precision: Literal["float32", "int8", "uint8", "binary", "ubinary"] = "float32"
    """As sentence-transformers' ``encode(precision=...)``: int8 / uint8 need ``precision_ranges``;
    binary / ubinary keep each dimension's sign, 8 dimensions a byte."""
    precision_ranges: list[list[float]] | None = None
    """For int8 / uint8: each dimension's ``[minimums, maximums]`` over a sample of the corpus
    (``echo_embeddings.calibration_ranges``), the same for every call."""
    show_progress: bool = False
    """Show a progress bar while embedding documents."""
    query_instruction: str | None = None
    """Instruction for the query template (echo's ``Instruct: ...``); ``None`` uses the model's own."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra core options: ``output_layer``, ``tp_layers``, ``max_seq_length``, ``dtype`` ..."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    _output: OutputFormat = PrivateAttr()

    @model_validator(mode="after")
    def _check_output(self) -> EchoEmbeddings:
        """Truncation and precision are checked when the object is made, not at the first call."""
        self._output = OutputFormat(self.truncate_dim, self.normalize, self.precision, self.precision_ranges)
        return self

    def _encoder(self) -> SharedModel:
        # Loads lazily, once per configuration per process (shared across instances).
        shared = shared_model(self.model, self.strategy, self.device, **self.model_kwargs)
        shared.check_truncation(self.truncate_dim)
        return shared

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents with the strategy's document template; the texts are not altered."""
        if not texts:
            return []
        return self._encoder().encode(texts, "document", batch_size=self.batch_size, output=self._output, show_progress=self.show_progress)

    def embed_query(self, text: str) -> list[float]:
        """Embed a query with the strategy's query template."""
        return self._encoder().encode([text], "query", instruction=self.query_instruction, output=self._output)[0]

    def late_chunks(
        self,
        texts: Sequence[str],
        chunk_spans: Sequence[Sequence[tuple[int, int]]] | None = None,
        *,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        chunking: str = "late",
        window_overlap: int | None = None,
    ) -> list[list[Chunk]]:
        """Each text's chunks (``text``, ``start``, ``end``, ``embedding``) with this configuration's
        model, batch size, normalisation and progress bar: the core's ``encode_chunks``."""
        return self._encoder().encode_chunks(
            list(texts), chunk_spans, chunk_tokens=chunk_tokens, chunking=chunking, window_overlap=window_overlap,
            batch_size=self.batch_size, normalize_embeddings=self.normalize, show_progress_bar=self.show_progress,
        )

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """The event loop stays free; concurrent calls (from any number of tasks and threads) share
        the model's batches through its scheduler."""
        if not texts:
            return []
        if self.show_progress or self.batch_size != DEFAULT_BATCH_SIZE:
            return await asyncio.to_thread(self.embed_documents, texts)  # a call of its own, with its progress bar or batch size
        return await self._encoder().aencode(texts, "document", output=self._output)

    async def aembed_query(self, text: str) -> list[float]:
        """Like :meth:`aembed_documents`, with the query template."""
        return (await self._encoder().aencode([text], "query", instruction=self.query_instruction, output=self._output))[0]
