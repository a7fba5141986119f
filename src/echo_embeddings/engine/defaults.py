"""Per-model defaults: the output layer of every strategy, and the token-prepending layers of the
``+tp`` strategies, for known model families.

Keyed by (model_type, number of layers, vocabulary size or None for any), then by preset name;
``"*+tp"`` stands for every token-prepending preset not named. A preset a row does not name runs
at the final hidden state (TP presets: layer 1 to the first quarter and the penultimate output).
The 7-9B rows are Fu et al.'s settings. The small ones were measured on the dev sets with
``benchmarks/tune_zero_shot.py`` (four STS sets, SciFact, two classification sets): a layer other
than the final one, or TP on, is kept only where it beat that on every STS set and lost no more
than a point on SciFact or a classification set.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import nn

from .model_parts import decoder_layers


class Defaults(NamedTuple):
    """Token-prepending layers ``[tp_start, tp_stop)`` (equal: TP off) and the output layer."""

    tp_start: int
    tp_stop: int
    output_layer: int


DEFAULTS: dict[tuple[str, int, int | None], dict[str, Defaults]] = {
    ("llama", 32, 32000): {"*+tp": Defaults(1, 8, -2)},  # LLaMA-2-7B: layers 1..7
    ("llama", 32, 128256): {"*+tp": Defaults(1, 4, -2)},  # Llama-3-8B: layers 1..3
    ("qwen2", 28, None): {"*+tp": Defaults(1, 7, -2)},  # Qwen2-7B: layers 1..6
    ("gemma2", 42, None): {"*+tp": Defaults(1, 7, -2)},  # Gemma-2-9B: layers 1..6
    # SmolLM2-135M (benchmarks/tune_zero_shot.py, README "Results"): echo, mean and PCoT pool an
    # upper hidden state that beat the final layer on every STS set and SciFact without losing
    # classification; PromptEOL and KE stay at the final layer (-0.6 / -0.9 on SICK trial at
    # hidden state 28). PromptEOL+TP (layers 1..7, hidden state 28) beat PromptEOL on every STS
    # set; PCoT+TP lost to PCoT at hidden state 28 and KE+TP to KE on SICK trial (and 2.6 points
    # on Banking77), so their TP is off, as MetaEOL's (it gained on one set, lost on the other).
    ("llama", 30, 49152): {
        "*+tp": Defaults(1, 1, -1),
        "prompteol+tp": Defaults(1, 8, -3),
        "pcot+tp": Defaults(1, 1, -3),
        "echo": Defaults(0, 0, -3),
        "mean": Defaults(0, 0, -5),
        "pcot": Defaults(0, 0, -3),
    },
    # Gemma 3 270M: TP (layers 1..2) lost to PCoT on every STS set and SciFact, so it is off.
    # Echo at hidden state 16 beats the final layer on every STS set (+1.0 to +8.0), SciFact
    # (+8.7) and classification, mean at hidden state 14 on every set; PCoT stays at the final layer.
    ("gemma3_text", 18, 262144): {"*+tp": Defaults(1, 1, -1), "echo": Defaults(0, 0, -3), "mean": Defaults(0, 0, -5)},
}


def preset_defaults(model: nn.Module, preset: str = "*+tp") -> Defaults:
    """The table entry for this model and preset (a name ending in ``+tp`` falls back to the row's
    ``"*+tp"``), else the generic default: final layer, or for TP layer 1 to the first quarter and
    the penultimate output."""
    config = model.config  # type: ignore[union-attr]
    return defaults_for(getattr(config, "model_type", ""), len(decoder_layers(model)), getattr(config, "vocab_size", None), preset)


def defaults_for(model_type: str, layers: int, vocab_size: int | None, preset: str = "*+tp") -> Defaults:
    """:func:`preset_defaults` from the three numbers that key the table (no model needed)."""
    found = DEFAULTS.get((model_type, layers, vocab_size)) or DEFAULTS.get((model_type, layers, None)) or {}
    if preset in found:
        return found[preset]
    if preset.endswith("+tp"):
        return found.get("*+tp") or Defaults(min(1, layers - 1), max(2, layers // 4 + 1), -2)
    return Defaults(0, 0, -1)
