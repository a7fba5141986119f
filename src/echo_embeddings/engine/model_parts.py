"""What the engine needs to know about a decoder, found by inspection: its list of layers, its final
norm, how many hidden states it has, the keyword its forward takes a key/value cache under, and
whether activation checkpointing is on. Any decoder whose blocks are a module list qualifies."""

from __future__ import annotations

import inspect
from functools import lru_cache

import torch
from torch import nn

_LAYER_LIST_NAMES = ("layers", "h", "blocks", "layer")
_FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "final_norm")


class UnsupportedModelError(TypeError):
    pass


@lru_cache(maxsize=None)
def _cache_keyword_of(forward_class: type) -> str | None:
    try:
        parameters = inspect.signature(forward_class.forward).parameters
    except (TypeError, ValueError):
        return None
    # transformers 5.24 renamed past_key_values to cache (the old name warns until 5.40).
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


def cache_keyword(model: nn.Module) -> str | None:
    """The name under which this model's forward takes a key/value cache, or None if it takes none."""
    return _cache_keyword_of(type(model))


def input_device(model: nn.Module) -> torch.device:
    """Where the decoder's inputs go: its input embeddings' device, or, when accelerate placed the
    model over several devices (``device_map``) and offloaded the embeddings, the device they run on."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is None:
        return next(model.parameters()).device
    execution = getattr(getattr(embeddings, "_hf_hook", None), "execution_device", None)
    if execution is not None:
        return torch.device(execution) if not isinstance(execution, int) else torch.device("cuda", execution)
    return embeddings.weight.device


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks, found by name and length on the bare model (or one level down)."""
    n_layers = _num_layers(model)
    candidates = [model, *(m for _, m in model.named_children())]
    for owner in candidates:
        for name in _LAYER_LIST_NAMES:
            layers = getattr(owner, name, None)
            if isinstance(layers, nn.ModuleList) and (n_layers is None or len(layers) == n_layers):
                return layers
    raise UnsupportedModelError(
        f"{type(model).__name__} has no list of decoder layers under {'/'.join(_LAYER_LIST_NAMES)}"
        f"{f' with {n_layers} entries' if n_layers else ''}; token prepending and intermediate layers need one"
    )


def final_norm(model: nn.Module) -> nn.Module:
    for name in _FINAL_NORM_NAMES:
        norm = getattr(model, name, None)
        if isinstance(norm, nn.Module):
            return norm
    raise UnsupportedModelError(f"{type(model).__name__} has no final norm under {'/'.join(_FINAL_NORM_NAMES)}")


def _num_layers(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def resolve_output_layer(model: nn.Module, output_layer: int) -> tuple[int, int]:
    """``(index, n_layers)`` with a negative index counted from the final output."""
    n = len(decoder_layers(model)) if output_layer != -1 else (_num_layers(model) or 0)
    index = output_layer + n + 1 if output_layer < 0 else output_layer
    if not 0 <= index <= n:
        raise ValueError(f"output_layer={output_layer} is outside this model's hidden states 0..{n} (or -1..-{n + 1})")
    return index, n


def checkpointing(model: nn.Module) -> bool:
    """Whether transformers' activation (gradient) checkpointing would run in this model's next
    forward: turned on for a layer and the model in training mode. Its layers then drop any
    key/value cache."""
    return model.training and any(getattr(m, "gradient_checkpointing", False) is True for m in decoder_layers(model))
