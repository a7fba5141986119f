"""The pooling core: torch and transformers only (no sentence-transformers, no training code).

========================  ==================================================================
``template.py``           the template grammar (``{x}``, ``{x*}``, ``{instruction}``, ``{tp}``)
``presets.py``            named strategies (echo, PromptEOL, token prepending, ...) and their registry
``settings.py``           :class:`EmbedderSettings`: every setting, declared once, what a save writes
``defaults.py``           per-model defaults: pooled hidden state and token-prepending layers
``inputs.py``             input checks and the task vocabulary (query / document / none)
``layout.py``             a template in one tokenizer's ids
``batching.py``           rows into padded or packed tensors
``schedule.py``           which texts share a forward: the token budget, out-of-memory halving
``model_parts.py``        a decoder's layers, final norm and cache keyword, found by inspection
``forward.py``            the decoder forward with token prepending, early exit and a layer entry
``prefix_cache.py``       the template prefix's keys and values, computed once
``packing.py``            the padding-free attention backend
``fast_paths.py``         which of those optimisations run, and why not
``pooling.py``            mean and last-token pooling
``loading.py``            decoders from ids, folders, GGUF files and embedded aliases
``engine.py``             :class:`Engine`, which ties them together
========================  ==================================================================
"""

from .engine import Engine
from .settings import EmbedderSettings

__all__ = ["EmbedderSettings", "Engine"]
