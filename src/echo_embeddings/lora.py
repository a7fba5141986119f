"""LoRA adapters on the decoder, through peft's own API.

transformers 5.24's ``model.add_adapter`` asks for peft >= 0.22, newer than the registry has; peft's
``inject_adapter_in_model`` works with the releases that install today, so the adapter goes into
the bare decoder in place (only the adapter weights train). A saved model with an adapter holds
the adapter (``adapter_model.safetensors``, a few percent of the full weights) and names its base model; loading reads the
base and reattaches the adapter. :func:`merge_lora` folds the adapter into the weights instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .engine.model_parts import decoder_layers

ADAPTER_WEIGHTS = "adapter_model.safetensors"
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""Attention and MLP projections of Llama-style decoders (SmolLM2, Gemma, Qwen, Mistral, Phi-3 ...)."""


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ImportError("LoRA needs peft: pip install 'echo-embeddings[train]'") from None
    return peft


def lora_settings(
    r: int = 16, alpha: int = 32, dropout: float = 0.0, target_modules: Sequence[str] | None = None, layers: Sequence[int] | None = None
) -> dict[str, Any]:
    """The saved description of an adapter: rank, scale, dropout, target modules and layers."""
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"LoRA rank r must be a positive int, got {r!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
    return {
        "r": r,
        "alpha": alpha,
        "dropout": dropout,
        "target_modules": sorted(target_modules or DEFAULT_TARGETS),
        "layers": None if layers is None else sorted(int(i) for i in layers),
    }


def inject(decoder: nn.Module, settings: dict[str, Any]) -> None:
    """Put a LoRA adapter (zero at the start, so vectors are unchanged) into ``decoder``."""
    peft = _peft()
    n = len(decoder_layers(decoder))
    layers = settings["layers"]
    if layers is not None and not all(0 <= i < n for i in layers):
        raise ValueError(f"LoRA layers {layers} are outside the model's 0..{n - 1}")
    present = {name.rsplit(".", 1)[-1] for name, _ in decoder.named_modules()}
    missing = [t for t in settings["target_modules"] if t not in present]
    if missing == settings["target_modules"]:
        raise ValueError(f"None of the LoRA target modules {missing} exist in {type(decoder).__name__}; pass target_modules=")
    config = peft.LoraConfig(
        r=settings["r"],
        lora_alpha=settings["alpha"],
        lora_dropout=settings["dropout"],
        target_modules=[t for t in settings["target_modules"] if t in present],
        layers_to_transform=layers,
        layers_pattern=None if layers is None else _layers_name(decoder),
    )
    peft.inject_adapter_in_model(config, decoder)


def _layers_name(decoder: nn.Module) -> str:
    layers = decoder_layers(decoder)
    return next(name.rsplit(".", 1)[-1] for name, module in decoder.named_modules() if module is layers)


def adapter_state(decoder: nn.Module) -> dict[str, torch.Tensor]:
    return _peft().get_peft_model_state_dict(decoder)


def save_adapter(decoder: nn.Module, folder: str | Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in adapter_state(decoder).items()}, str(Path(folder) / ADAPTER_WEIGHTS))


def load_adapter(decoder: nn.Module, folder: str | Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(Path(folder) / ADAPTER_WEIGHTS))
    result = _peft().set_peft_model_state_dict(decoder, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"{folder}: adapter weights {unexpected[:3]} do not fit this model")


def merge(decoder: nn.Module) -> int:
    """Fold every LoRA layer into its base weights and put the plain layer back; returns how many."""
    from peft.tuners.lora import LoraLayer

    merged = 0
    for name, module in list(decoder.named_modules()):
        if isinstance(module, LoraLayer) and hasattr(module, "get_base_layer"):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(decoder.get_submodule(parent_name) if parent_name else decoder, child, module.get_base_layer())
            merged += 1
    if hasattr(decoder, "peft_config"):
        del decoder.peft_config
    return merged


def settings_from_peft(config: Any) -> dict[str, Any]:
    """:func:`lora_settings` arguments from a ``peft.LoraConfig`` (sentence-transformers'
    ``add_adapter`` hands one over): rank, alpha, dropout, target modules and layers."""
    targets = config.target_modules
    if isinstance(targets, str):
        raise ValueError("Give target_modules as a list of module names; a regular expression is not supported here")
    layers = config.layers_to_transform
    return {
        "r": config.r,
        "alpha": config.lora_alpha,
        "dropout": config.lora_dropout,
        "target_modules": sorted(targets) if targets else None,
        "layers": [layers] if isinstance(layers, int) else layers,
    }
