"""Sentence embeddings from any causal language model: echo, token prepending and baselines.

The public API, re-exported from the modules that define it (see the architecture page of the docs).
"""

from ._version import __version__
from .api import add_lora, is_saved_model, load, merge_lora
from .engine.engine import Engine
from .engine.forward import LayerPlan
from .engine.inputs import check_texts
from .engine.loading import ALIASES, DEFAULT_MODEL, EmbeddedModel, register_alias
from .engine.presets import PRESETS, Preset, as_preset, get_preset, register_preset
from .engine.settings import DEFAULT_BATCH_SIZE, EmbedderSettings
from .engine.template import Template
from .models.embedder import EchoEmbedder
from .models.sentence_transformer import EchoSentenceTransformer
from .models.whitening import Whitening, fit_whitening
from .streaming import save_npy

__all__ = [
    "ALIASES",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MODEL",
    "PRESETS",
    "EchoEmbedder",
    "EchoSentenceTransformer",
    "EmbeddedModel",
    "EmbedderSettings",
    "Engine",
    "LayerPlan",
    "Preset",
    "Template",
    "Whitening",
    "__version__",
    "add_lora",
    "as_preset",
    "check_texts",
    "fit_whitening",
    "get_preset",
    "is_saved_model",
    "load",
    "merge_lora",
    "register_alias",
    "register_preset",
    "save_npy",
]
