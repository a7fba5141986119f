"""The path that models saved by echo-embeddings 0.1 and 0.2 name in their ``modules.json``
(``echo_embeddings.sentence_transformer.EchoEmbedder``); the classes live in :mod:`echo_embeddings.models`."""

from .models.embedder import EchoEmbedder
from .models.sentence_transformer import EchoSentenceTransformer

__all__ = ["EchoEmbedder", "EchoSentenceTransformer"]
