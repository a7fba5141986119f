"""sentence-transformers modules and the model class: ``EchoEmbedder`` (the input module),
``EchoSentenceTransformer`` (the model) and ``Whitening`` (a corpus-fitted module after it)."""

from .embedder import EchoEmbedder
from .sentence_transformer import EchoSentenceTransformer
from .whitening import Whitening, fit_whitening

__all__ = ["EchoEmbedder", "EchoSentenceTransformer", "Whitening", "fit_whitening"]
