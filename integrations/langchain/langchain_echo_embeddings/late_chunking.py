"""``EchoLateChunker``: splits ``Document``s into chunk ``Document``s whose vectors were pooled from the
whole document (late chunking), and hands those vectors to any vector store without re-embedding."""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from echo_embeddings.late_chunking import DEFAULT_CHUNK_TOKENS
from langchain_core.documents import BaseDocumentTransformer, Document
from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from langchain_echo_embeddings.embeddings import EchoEmbeddings


class EchoLateChunker(BaseModel, BaseDocumentTransformer, Embeddings):
    """Late chunking as a document transformer that is also the store's ``Embeddings``.

    ``split_documents`` splits each document into chunks (metadata ``start_index``/``end_index``:
    character offsets into the document, and ``chunk_index``) and embeds every chunk in the
    context of its whole document. Give the chunker to a vector store as its embeddings: when the
    store embeds those chunks, it receives their late vectors (nothing is embedded twice);
    queries, and any other text, are embedded by ``embeddings`` as usual.

    Example:
        .. code-block:: python

            from langchain_echo_embeddings import EchoEmbeddings, EchoLateChunker
            from langchain_qdrant import QdrantVectorStore

            chunker = EchoLateChunker(embeddings=EchoEmbeddings(model="smollm2-135m"), chunk_tokens=256)
            chunks = chunker.split_documents(documents)
            store = QdrantVectorStore.from_documents(chunks, chunker, location=":memory:", collection_name="docs")
            store.similarity_search("What does echo do?")
    """

    embeddings: EchoEmbeddings = Field(default_factory=EchoEmbeddings)
    """The model, strategy and options (a mean-pooling strategy: ``echo`` by default)."""
    chunk_tokens: int = Field(default=DEFAULT_CHUNK_TOKENS, gt=0)
    """Chunk size in the model's tokens (a chunk ends at a sentence end in its second half, if any)."""
    chunking: Literal["late", "naive"] = "late"
    """``late`` pools each chunk from the whole document's forward; ``naive`` embeds chunks alone."""
    text_splitter: Any = None
    """Optional LangChain ``TextSplitter`` whose ``split_text`` chooses the chunks instead of
    ``chunk_tokens`` (with ``chunk_overlap=0``: late chunks may not overlap)."""
    window_overlap: int | None = None
    """Tokens shared by consecutive windows of documents longer than the model's window."""
    max_pending: int = Field(default=100_000, gt=0)
    """Most chunk vectors kept between ``split_documents`` and the store's ``embed_documents``
    (float32, about 2 KB each for a 576-dimensional model). Past it the oldest are dropped with a
    warning, and a store that later embeds those chunks gets them embedded on their own."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    _pending: OrderedDict[str, deque] = PrivateAttr(default_factory=OrderedDict)
    _count: int = PrivateAttr(default=0)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def split_and_embed(self, documents: Sequence[Document]) -> list[tuple[Document, list[float]]]:
        """Chunk ``Document``s with their vectors, documents and chunks in order; nothing is kept."""
        if not documents:
            return []
        texts = [d.page_content for d in documents]
        spans = None if self.text_splitter is None else [_spans_of(self.text_splitter.split_text(t), t, i) for i, t in enumerate(texts)]
        found = self.embeddings.late_chunks(texts, spans, chunk_tokens=self.chunk_tokens, chunking=self.chunking, window_overlap=self.window_overlap)
        out = []
        for document, chunks in zip(documents, found):
            for i, chunk in enumerate(chunks):
                metadata = {**document.metadata, "start_index": chunk.start, "end_index": chunk.end, "chunk_index": i}
                chunk_id = f"{document.id}-{i}" if document.id else None
                out.append((Document(page_content=chunk.text, metadata=metadata, id=chunk_id), chunk.embedding.tolist()))
        return out

    def transform_documents(self, documents: Sequence[Document], **kwargs: Any) -> list[Document]:
        """Split and embed; the vectors wait here until a store embeds these chunks."""
        pairs = self.split_and_embed(documents)
        dropped = 0
        with self._lock:
            for document, vector in pairs:
                self._pending.setdefault(document.page_content, deque()).append(np.asarray(vector, dtype=np.float32))
                self._count += 1
            while self._count > self.max_pending:
                text, queue = next(iter(self._pending.items()))
                queue.popleft()
                self._count -= 1
                dropped += 1
                if not queue:
                    del self._pending[text]
        if dropped:
            warnings.warn(
                f"EchoLateChunker holds at most max_pending={self.max_pending} chunk vectors that no store has taken yet; "
                f"dropped the {dropped} oldest. A store that embeds those chunks later gets them embedded on their own, "
                "not late-chunked: add chunks to the store before splitting more, or raise max_pending",
                stacklevel=2,
            )
        return [document for document, _ in pairs]

    def split_documents(self, documents: Sequence[Document]) -> list[Document]:
        return self.transform_documents(documents)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """The late vector of each text that is a chunk from ``split_documents`` not yet handed
        out (equal texts in the order they were split); any other text embedded as a document."""
        out: list[list[float] | None] = []
        with self._lock:
            for text in texts:
                queue = self._pending.get(text)
                out.append(queue.popleft().tolist() if queue else None)
                if queue is not None:
                    self._count -= 1
                    if not queue:
                        del self._pending[text]
        rest = [t for t, v in zip(texts, out) if v is None]
        fresh = iter(self.embeddings.embed_documents(rest) if rest else [])
        return [v if v is not None else next(fresh) for v in out]

    def embed_query(self, text: str) -> list[float]:
        return self.embeddings.embed_query(text)

    @property
    def pending(self) -> int:
        """Chunk vectors split but not yet handed to a store."""
        with self._lock:
            return self._count

    def clear_pending(self) -> None:
        """Drop the vectors of chunks split but not yet handed to a store."""
        with self._lock:
            self._pending.clear()
            self._count = 0


def _spans_of(pieces: list[str], text: str, index: int) -> list[tuple[int, int]]:
    """Where a splitter's pieces lie in ``text``, in order."""
    spans: list[tuple[int, int]] = []
    for piece in pieces:
        start = text.find(piece, spans[-1][0] + 1 if spans else 0)
        if start < 0:
            raise ValueError(f"document {index}: the text splitter returned a piece that is not in the document: {piece[:40]!r}")
        if spans and start < spans[-1][1]:
            raise ValueError(f"document {index}: the text splitter's pieces overlap; late chunks may not overlap, so set chunk_overlap=0")
        spans.append((start, start + len(piece)))
    return spans
