"""Template-prefix KV cache: the keys and values of the ids every prompt starts with, computed once.

Attention is causal, so the keys and values of a template's constant start (BOS, ``Rewrite the
following sentence:``, a Knowledge-Enhancement preamble, a retrieval instruction) do not depend
on the text after them. One forward over the prefix therefore serves every batch; the batch
forward starts after it. The prefix is never pooled and token prepending overwrites a token
after it, so both compose with the cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from transformers import DynamicCache

from .forward import LayerPlan, forward_hidden
from .model_parts import cache_keyword, input_device

KeyValues = list[tuple[torch.Tensor, torch.Tensor]]


_optimizer_steps = 0
_watching = threading.Lock()
_watch_handle = None


def _count_step(*_: object) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


def watch_optimizer_steps() -> None:
    """Count optimizer steps from now on (once per process; called when a prefix cache is made,
    not at import). Fused optimizers (torch's fused AdamW, the transformers Trainer's default)
    update parameters without bumping their version counters, so every step counts as a change."""
    global _watch_handle
    with _watching:
        if _watch_handle is None:
            _watch_handle = register_optimizer_step_post_hook(_count_step)


def weights_version(model: nn.Module) -> tuple[int, int, int]:
    """Changes whenever the weights may have: an in-place update (``load_state_dict``, a manual
    edit), any optimizer step, or a parameter's storage being swapped."""
    # Inference tensors (weights accelerate streamed in for an offloaded layer) keep no version.
    params = [p for p in model.parameters() if not p.is_inference()]
    return sum(p._version for p in params), _optimizer_steps, sum(p.data_ptr() for p in params)


class PrefixCache:
    """Per-model store of prefix keys and values, keyed by ids, device, dtype and weights version."""

    def __init__(self, max_entries: int = 16) -> None:
        watch_optimizer_steps()
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, KeyValues] = OrderedDict()
        self._lock = threading.Lock()
        self.misses = 0

    def key_values(self, model: nn.Module, ids: tuple[int, ...], depth: int) -> KeyValues:
        """Keys and values ``[1, heads, len(ids), head_dim]`` of the first ``depth`` layers (an
        early exit never reads the others, so they are not computed).

        With gradients on (training) they are recomputed every time, so gradients reach the
        prefix tokens too; otherwise they are computed once and reused.
        """
        if torch.is_grad_enabled():
            return _forward_prefix(model, ids, depth)
        param = next(model.parameters())
        key = (ids, depth, param.device, param.dtype, weights_version(model))
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        kv = _forward_prefix(model, ids, depth)
        with self._lock:
            self.misses += 1
            self._entries[key] = kv
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return kv

    def past(self, model: nn.Module, ids: tuple[int, ...], depth: int, batch_size: int) -> DynamicCache:
        """A fresh cache holding the prefix for ``batch_size`` rows (the forward appends to it)."""
        kv = self.key_values(model, ids, depth)
        rows = [(k.expand(batch_size, -1, -1, -1), v.expand(batch_size, -1, -1, -1)) for k, v in kv]
        return DynamicCache(ddp_cache_data=rows, config=model.config)

    def __getstate__(self) -> dict:
        return {"max_entries": self.max_entries}  # a copy in another process starts empty

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_entries"])  # type: ignore[misc]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _forward_prefix(model: nn.Module, ids: tuple[int, ...], depth: int) -> KeyValues:
    device = input_device(model)
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    cache = DynamicCache(config=model.config)
    last = torch.tensor([len(ids) - 1], device=device)
    forward_hidden(model, input_ids, torch.ones_like(input_ids), LayerPlan(output_layer=depth), last, past=cache)
    layers = cache.layers[:depth]
    if any(layer.keys is None or layer.keys.shape[-2] != len(ids) for layer in layers):
        raise TypeError(f"{type(model).__name__} did not fill the key/value cache; set prefix_cache=False for it")
    return [(layer.keys, layer.values) for layer in layers]


def prefix_cache_support(model: nn.Module) -> str | None:
    """None if the model's forward takes a ``DynamicCache`` (under ``cache=`` or, before
    transformers 5.24, ``past_key_values=``); otherwise why the prefix cache cannot run."""
    config = getattr(model, "config", None)
    if config is None:
        return f"{type(model).__name__} has no config"
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder models are not supported"
    if cache_keyword(model) is None:
        return f"{type(model).__name__}.forward takes no key/value cache"
    return None
