"""Sentence embeddings from any causal language model: echo, token prepending and baselines.

The public API, re-exported from the modules that define it (see the architecture page of the docs).
Names are imported on first use, so ``import echo_embeddings`` (and the CLI's ``--help``) does not
load torch or sentence-transformers until something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

_EXPORTS = {
    "add_lora": "api",
    "is_saved_model": "api",
    "load": "api",
    "merge_lora": "api",
    "Engine": "engine.engine",
    "LayerPlan": "engine.forward",
    "check_texts": "engine.inputs",
    "ALIASES": "engine.aliases",
    "DEFAULT_MODEL": "engine.aliases",
    "EmbeddedModel": "engine.aliases",
    "register_alias": "engine.aliases",
    "PRESETS": "engine.presets",
    "Preset": "engine.presets",
    "as_preset": "engine.presets",
    "get_preset": "engine.presets",
    "register_preset": "engine.presets",
    "DEFAULT_BATCH_SIZE": "engine.settings",
    "EmbedderSettings": "engine.settings",
    "Template": "engine.template",
    "EchoEmbedder": "models.embedder",
    "EchoSentenceTransformer": "models.sentence_transformer",
    "OutputFormat": "output_format",
    "calibration_ranges": "output_format",
    "Whitening": "models.whitening",
    "fit_whitening": "models.whitening",
    "save_npy": "streaming",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'echo_embeddings' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # what type checkers and IDEs see: the same names, imported eagerly
    from .api import add_lora, is_saved_model, load, merge_lora
    from .engine.aliases import ALIASES, DEFAULT_MODEL, EmbeddedModel, register_alias
    from .engine.engine import Engine
    from .engine.forward import LayerPlan
    from .engine.inputs import check_texts
    from .engine.presets import PRESETS, Preset, as_preset, get_preset, register_preset
    from .engine.settings import DEFAULT_BATCH_SIZE, EmbedderSettings
    from .engine.template import Template
    from .models.embedder import EchoEmbedder
    from .models.sentence_transformer import EchoSentenceTransformer
    from .output_format import OutputFormat, calibration_ranges
    from .models.whitening import Whitening, fit_whitening
    from .streaming import save_npy
