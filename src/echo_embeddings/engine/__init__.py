"""The pooling core: torch and transformers only (no sentence-transformers, no training code).

========================  ==================================================================
``aliases.py``            the embedded models and the default model (no torch: the CLI checks names here)
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
``loading.py``            decoders from ids, folders, GGUF files and embedded aliases; device maps
``precision.py``          ``dtype="auto"`` per device (bf16 where native), int8 weights
``engine.py``             :class:`Engine`, which ties them together
========================  ==================================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .settings import EmbedderSettings

__all__ = ["EmbedderSettings", "Engine"]


def __getattr__(name: str) -> Any:
    """``Engine`` is imported on first use, so the light modules (settings, presets, templates,
    aliases) load without torch."""
    if name == "Engine":
        from .engine import Engine

        return Engine
    raise AttributeError(f"module 'echo_embeddings.engine' has no attribute {name!r}")


if TYPE_CHECKING:
    from .engine import Engine
