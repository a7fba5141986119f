from llama_index.embeddings.echo.base import EchoEmbedding
from llama_index.embeddings.echo.late_chunking import EchoLateChunkNodeParser

__all__ = ["EchoEmbedding", "EchoLateChunkNodeParser"]
