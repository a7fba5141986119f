"""The path that models saved by echo-embeddings 0.2 name in their ``modules.json``
(``echo_embeddings.whitening.Whitening``); the module lives in :mod:`echo_embeddings.models.whitening`."""

from .models.whitening import Whitening

__all__ = ["Whitening"]
