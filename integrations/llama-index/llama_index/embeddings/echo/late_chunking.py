"""``EchoLateChunkNodeParser``: splits documents into nodes whose embeddings were pooled from the whole
document (late chunking); ``VectorStoreIndex`` and ``IngestionPipeline`` store them as they are."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from echo_embeddings.late_chunking import DEFAULT_CHUNK_TOKENS
from llama_index.core.node_parser.interface import NodeParser
from llama_index.core.node_parser.node_utils import build_nodes_from_splits
from llama_index.core.schema import BaseNode, Document, MetadataMode, TextNode
from pydantic import Field

from llama_index.embeddings.echo.base import LATE_CHUNK_KEY, EchoEmbedding


class EchoLateChunkNodeParser(NodeParser):
    """Split documents into ``TextNode``s (``start_char_idx``/``end_char_idx`` into the document) and
    set each node's ``embedding`` from the whole document's forward.

    Put it last in an ``IngestionPipeline``, or pass its nodes to ``VectorStoreIndex(nodes,
    embed_model=...)``: both keep an embedding a node already has. An embed model placed after
    it in a pipeline would replace the late vectors; ``EchoEmbedding`` there keeps them and warns.
    The node text is embedded without its metadata (the vector reads the document itself).

    Example:
        .. code-block:: python

            from llama_index.core import VectorStoreIndex
            from llama_index.embeddings.echo import EchoEmbedding, EchoLateChunkNodeParser

            embed_model = EchoEmbedding(model_name="smollm2-135m")
            nodes = EchoLateChunkNodeParser(embed_model=embed_model, chunk_tokens=256).get_nodes_from_documents(documents)
            index = VectorStoreIndex(nodes, embed_model=embed_model)
    """

    embed_model: EchoEmbedding = Field(default_factory=EchoEmbedding, description="The model and strategy (mean-pooling: echo by default).")
    chunk_tokens: int = Field(default=DEFAULT_CHUNK_TOKENS, gt=0, description="Chunk size in the model's tokens; a chunk ends at a sentence end in its second half, if any.")
    chunking: Literal["late", "naive"] = Field(default="late", description="late: pooled from the whole document; naive: each chunk embedded alone.")
    window_overlap: int | None = Field(default=None, description="Tokens shared by consecutive windows of documents longer than the model's window.")

    @classmethod
    def class_name(cls) -> str:
        return "EchoLateChunkNodeParser"

    def _parse_nodes(self, nodes: Sequence[BaseNode], show_progress: bool = False, **kwargs: Any) -> list[BaseNode]:
        if not nodes:
            return []
        texts = [node.get_content(metadata_mode=MetadataMode.NONE) for node in nodes]
        found = self.embed_model.late_chunks(
            texts, chunk_tokens=self.chunk_tokens, chunking=self.chunking, window_overlap=self.window_overlap, show_progress=show_progress
        )
        out: list[BaseNode] = []
        for node, chunks in zip(nodes, found):
            built = build_nodes_from_splits([c.text for c in chunks], node, id_func=self.id_func)
            for piece, chunk in zip(built, chunks):
                piece.start_char_idx, piece.end_char_idx = chunk.start, chunk.end
                piece.embedding = chunk.embedding.tolist()
                piece.metadata[LATE_CHUNK_KEY] = self.chunking
                # New lists: the document's own (which nodes may share) stay as they are.
                piece.excluded_embed_metadata_keys = [*piece.excluded_embed_metadata_keys, LATE_CHUNK_KEY]
                piece.excluded_llm_metadata_keys = [*piece.excluded_llm_metadata_keys, LATE_CHUNK_KEY]
            out.extend(built)
        return out

    def _postprocess_parsed_nodes(self, nodes: list[BaseNode], parent_doc_map: dict[str, Document]) -> list[BaseNode]:
        # The base class finds each node's text in its document again (and can land on an earlier
        # repeat of a short text); the offsets from the tokenizer are exact, so keep them.
        spans = [(n.start_char_idx, n.end_char_idx) if isinstance(n, TextNode) else None for n in nodes]
        nodes = super()._postprocess_parsed_nodes(nodes, parent_doc_map)
        for node, span in zip(nodes, spans):
            if span is not None:
                node.start_char_idx, node.end_char_idx = span  # type: ignore[union-attr]
        return nodes
