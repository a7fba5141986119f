from llama_index.embeddings.echo.base import EchoEmbedding

__all__ = ["EchoEmbedding"]
