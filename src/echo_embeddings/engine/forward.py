"""The decoder forward and its hooks: token prepending, early exit, and entering the layer stack
part-way, for any decoder whose layers are a module list.

Hooks are registered for one forward only and act only in the thread that registered them,
so two threads can encode at once with different settings, and a model at rest carries no
hooks (it pickles and moves to other processes as usual). Per-call data for the attention
function (a packed batch's row boundaries) travels as call keyword arguments, which
transformers hands to the registered attention function of every layer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import Cache

from .model_parts import UnsupportedModelError, cache_keyword, decoder_layers, final_norm, resolve_output_layer

@dataclass(frozen=True)
class LayerPlan:
    """Which hidden state to pool and which layers get the token-prepending overwrite.

    ``output_layer`` indexes hidden states the way transformers' ``output_hidden_states`` does:
    0 is the embedding output, ``i`` the output of decoder layer ``i - 1``, and ``-1`` (= number
    of layers) the final, normalised output. Intermediate outputs are raw unless
    ``final_norm`` is set. Token prepending overwrites the placeholder before every layer
    ``i`` with ``tp_start <= i < tp_stop`` (no overwrite when they are equal).
    """

    output_layer: int = -1
    final_norm: bool = False
    tp_start: int = 0
    tp_stop: int = 0

    @property
    def token_prepending(self) -> bool:
        return self.tp_stop > self.tp_start


@dataclass
class LayerEntry:
    """Where one forward enters the decoder stack, for callers that already know some states.

    With ``states``, the forward starts at decoder layer ``layer`` with ``states`` as its input:
    the layers below it are swapped for a pass-through for this forward only. Without, every
    layer runs and ``capture`` (if given) receives layer ``layer``'s input. Training uses this
    to reuse the frozen lower layers' states (:mod:`echo_embeddings.training.frozen_states`).
    """

    layer: int
    states: torch.Tensor | None = None
    capture: Callable[[torch.Tensor], None] | None = None

    @property
    def skipped(self) -> int:
        """Decoder layers this forward does not run."""
        return self.layer if self.states is not None else 0


class PassThrough(nn.Module):
    """Stands in for a frozen decoder layer whose output is already known: returns its input."""

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return hidden_states


class _EarlyExit(Exception):
    """Raised from a hook to stop the forward once the wanted hidden state is captured."""

    def __init__(self, hidden: torch.Tensor) -> None:
        self.hidden = hidden


def _hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def forward_hidden(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    plan: LayerPlan,
    last_index: torch.Tensor,
    placeholder_index: torch.Tensor | None = None,
    past: Cache | None = None,
    position_ids: torch.Tensor | None = None,
    entry: LayerEntry | None = None,
    **attention_kwargs: Any,
) -> torch.Tensor:
    """Run the bare decoder under ``plan`` and return the hidden states ``[batch, seq, dim]``.

    ``past`` holds a cached prefix that every row continues; the hidden states cover only the
    new ids. A packed batch comes with its ``position_ids``, an all-ones mask and its layout in
    ``attention_kwargs``, which reach the registered attention function. Layers after an
    intermediate output layer are never called. ``entry`` starts the forward part-way up
    the stack, or captures a layer's input (:class:`LayerEntry`).
    """
    index, n = resolve_output_layer(model, plan.output_layer)
    early = index < n
    if position_ids is None:
        if attention_mask is None:
            raise ValueError("forward_hidden needs an attention_mask, or position_ids for a packed batch")
        cached = past.get_seq_length() if past is not None else 0
        if cached:
            attention_mask = torch.cat([attention_mask.new_ones(attention_mask.shape[0], cached), attention_mask], dim=1)
        # Explicit positions make left padding exact too (models otherwise count pads as positions).
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, cached:]
    inputs: dict[str, Any] = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **attention_kwargs)
    if past is not None:
        keyword = cache_keyword(model)
        if keyword is None:
            raise UnsupportedModelError(f"{type(model).__name__}.forward takes no key/value cache; turn the prefix cache off for it")
        inputs.update({keyword: past, "use_cache": True})
    if not early and not plan.token_prepending and entry is None:
        return model(**inputs).last_hidden_state
    layers = decoder_layers(model)
    if plan.token_prepending:
        if placeholder_index is None:
            raise ValueError("token prepending needs a template with a {tp} placeholder")
        if not 0 <= plan.tp_start < plan.tp_stop <= len(layers):
            raise ValueError(f"token prepending layers {plan.tp_start}..{plan.tp_stop} are outside 0..{len(layers)}")
    owner = threading.get_ident()
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)

    # Another thread may remove its hooks while this forward runs over a snapshot of them; torch
    # then calls such a hook without kwargs. Hooks that are not ours therefore accept both forms.
    def overwrite(_module: nn.Module, args: tuple, kwargs: dict | None = None) -> Any:
        if threading.get_ident() != owner or kwargs is None:
            return None
        hidden = _hidden_arg(args, kwargs)
        if torch.is_grad_enabled():
            hidden = hidden.clone()  # keep autograd intact: never write into a tensor the graph saved
        hidden[rows, placeholder_index] = hidden[rows, last_index]
        return _with_hidden(args, kwargs, hidden)

    def stop(_module: nn.Module, args: tuple, kwargs: dict | None = None) -> Any:
        if threading.get_ident() == owner and kwargs is not None:
            raise _EarlyExit(_hidden_arg(args, kwargs))
        return None

    def put_in(_module: nn.Module, args: tuple, kwargs: dict | None = None) -> Any:
        if threading.get_ident() != owner or kwargs is None:
            return None
        if entry.states is None:  # type: ignore[union-attr]
            if entry.capture is not None:  # type: ignore[union-attr]
                entry.capture(_hidden_arg(args, kwargs))  # type: ignore[union-attr]
            return None
        return _with_hidden(args, kwargs, entry.states)  # type: ignore[union-attr]

    with ExitStack() as hooks:
        if entry is not None:
            # Registered first, so a token-prepending overwrite at the same layer sees the states put in.
            hooks.callback(layers[entry.layer].register_forward_pre_hook(put_in, with_kwargs=True).remove)
            if entry.states is not None:
                for i in range(entry.layer):
                    hooks.callback(layers.__setitem__, i, layers[i])
                    layers[i] = PassThrough()
        if early:
            hooks.callback(layers[index].register_forward_pre_hook(stop, with_kwargs=True).remove)
        if plan.token_prepending:
            first = entry.skipped if entry is not None else 0  # skipped layers' overwrites are in the states put in
            for layer in layers[max(plan.tp_start, first) : min(plan.tp_stop, index)]:
                hooks.callback(layer.register_forward_pre_hook(overwrite, with_kwargs=True).remove)
        try:
            hidden = model(**inputs).last_hidden_state
        except _EarlyExit as exit_:
            hidden = exit_.hidden
            if plan.final_norm:
                hidden = final_norm(model)(hidden)
    return hidden
