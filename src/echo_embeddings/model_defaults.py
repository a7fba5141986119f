"""Per-model defaults: the token-prepending layers and output layer for known model families.

Keyed by (model_type, number of layers, vocabulary size or None for any), then by preset
(``"*"`` for any). The 7-9B rows are Fu et al.'s settings; the small ones were tuned on the dev
sets with ``benchmarks/tune_tp.py`` and only kept where TP beat its base prompt on both sets.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import nn

from .forward import decoder_layers


class TPDefaults(NamedTuple):
    """Token-prepending layers and output layer for one model family and size."""

    tp_start: int
    tp_stop: int
    output_layer: int


TP_DEFAULTS: dict[tuple[str, int, int | None], dict[str, TPDefaults]] = {
    ("llama", 32, 32000): {"*": TPDefaults(1, 8, -2)},  # LLaMA-2-7B: layers 1..7
    ("llama", 32, 128256): {"*": TPDefaults(1, 4, -2)},  # Llama-3-8B: layers 1..3
    ("qwen2", 28, None): {"*": TPDefaults(1, 7, -2)},  # Qwen2-7B: layers 1..6
    ("gemma2", 42, None): {"*": TPDefaults(1, 7, -2)},  # Gemma-2-9B: layers 1..6
    # SmolLM2-135M: layers 1..7, pooling hidden state 28 of 30. MetaEOL gained on one set and
    # lost on the other, so its TP is off.
    ("llama", 30, 49152): {"*": TPDefaults(1, 8, -3), "metaeol+tp": TPDefaults(1, 1, -1)},
    # Gemma 3 270M: every range tried helped STS-B but hurt SICK, so TP is off by default.
    ("gemma3_text", 18, 262144): {"*": TPDefaults(1, 1, -1)},
}


def tp_defaults(model: nn.Module, preset: str = "*") -> TPDefaults:
    """The table entry for this model and preset, else layer 1 to the first quarter and the penultimate output."""
    config = model.config  # type: ignore[union-attr]
    n = len(decoder_layers(model))
    key = (getattr(config, "model_type", ""), n)
    found = TP_DEFAULTS.get((*key, getattr(config, "vocab_size", None))) or TP_DEFAULTS.get((*key, None)) or {}
    return found.get(preset) or found.get("*") or TPDefaults(min(1, n - 1), max(2, n // 4 + 1), -2)


