"""LangChain embeddings backed by echo-embeddings."""

from langchain_echo_embeddings.embeddings import EchoEmbeddings

__all__ = ["EchoEmbeddings"]
