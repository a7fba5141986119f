"""LangChain embeddings and late chunking backed by echo-embeddings."""

from langchain_echo_embeddings.embeddings import EchoEmbeddings
from langchain_echo_embeddings.late_chunking import EchoLateChunker

__all__ = ["EchoEmbeddings", "EchoLateChunker"]
