"""Reuse of frozen work in training: the hidden states entering the lowest trainable decoder layer,
computed once per row and put back in every later step that sees the row again.

With LoRA on the top layers only, every layer below them computes the same states for a text in
every epoch. :class:`FrozenStates` keeps those states per row (keyed by the row's token ids and
the cached prefix it continues) the first time the row goes through a training forward. When every
row of a batch is known, the forward starts at the lowest trainable layer: the layers below it are
swapped for a pass-through for that one forward and put back right after it, and the kept states
are put in at that layer's input. Vectors and gradients equal the full forward's up to float
rounding (rows batched with other rows round differently).

It acts only while gradients are on (training steps); ``encode`` and evaluation never use it.
:func:`echo_embeddings.training.train` puts it in the engine's forward for the run
(``engine.entering_with``) when the lowest trainable layer is
above the first, and off again after it.
"""

from __future__ import annotations

import warnings
from itertools import pairwise

import torch
from torch import nn

from ..engine.batching import Batch
from ..engine.forward import LayerEntry
from ..engine.model_parts import decoder_layers

DEFAULT_MAX_TOKENS = 4_000_000
"""Most token states kept (SmolLM2 in fp32: about 9 GB at the cap; the 15,367 distinct texts of both
STS training files under echo are 0.46M). Rows met after the cap run every layer."""


def first_trainable_layer(model: nn.Module) -> int:
    """Index of the lowest decoder layer with a parameter that trains (0 if the embeddings train;
    the number of layers if none does)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and any(p.requires_grad for p in embeddings.parameters()):
        return 0
    layers = decoder_layers(model)
    return next((i for i, layer in enumerate(layers) if any(p.requires_grad for p in layer.parameters())), len(layers))


def dropout_below(model: nn.Module, start: int) -> str | None:
    """Why states below layer ``start`` differ from one training step to the next (dropout), or None."""
    config = getattr(model, "config", None)
    for key in ("attention_dropout", "attn_pdrop", "attention_probs_dropout_prob", "hidden_dropout", "resid_pdrop", "embd_pdrop"):
        value = getattr(config, key, 0.0)
        if isinstance(value, float) and value > 0:
            return f"its config sets {key}={value}"
    layers = decoder_layers(model)
    for i in range(min(start, len(layers))):
        for name, module in layers[i].named_modules():
            if isinstance(module, nn.Dropout) and module.p > 0:
                return f"layer {i} has dropout {module.p} ({name})"
    return None


class FrozenStates:
    """Per-row hidden states at the input of decoder layer ``start`` (see the module docstring).

    Args:
        model: the bare decoder; ``start`` is its lowest trainable layer at construction, and the
            layers below it must stay frozen while this object is in use (checked each forward).
        max_tokens: most token states kept; rows met after that run every layer (with a warning).
    """

    def __init__(self, model: nn.Module, max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
        self.model = model
        self.start = first_trainable_layer(model)
        self.max_tokens = max_tokens
        self.tokens = 0
        self.served = 0
        self.computed = 0
        self._states: dict[tuple[tuple[int, ...], tuple[int, ...]], torch.Tensor] = {}
        self._warned = False

    def __len__(self) -> int:
        return len(self._states)

    def _check_frozen(self) -> None:
        if first_trainable_layer(self.model) < self.start:
            raise RuntimeError(
                f"a layer below decoder layer {self.start} now trains, so its kept states are stale; "
                "reuse of frozen states needs the layers below the lowest trainable one to stay frozen"
            )

    @staticmethod
    def slots(batch: Batch) -> list[tuple[int, int, int]]:
        """Where each row lies in the batch tensors: ``(tensor row, begin, end)``."""
        if batch.packed:
            bounds = batch.cu_seqlens.tolist()  # type: ignore[union-attr]
            return [(0, begin, end) for begin, end in pairwise(bounds)]
        mask = batch.attention_mask.bool()  # type: ignore[union-attr]
        out = []
        for r in range(mask.shape[0]):
            real = mask[r].nonzero()
            out.append((r, int(real[0]), int(real[-1]) + 1))
        return out

    def _keys(self, batch: Batch, slots: list[tuple[int, int, int]]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        ids = batch.input_ids.tolist()
        return [(tuple(batch.prefix), tuple(ids[r][begin:end])) for r, begin, end in slots]

    def __call__(self, batch: Batch, depth: int) -> LayerEntry | None:
        """Where one training forward that pools hidden state ``depth`` enters the decoder: at the
        lowest trainable layer with the kept states when every row is known, else every layer runs
        and that layer's input is kept; None when nothing below ``depth`` is frozen. The engine asks
        this inside ``engine.entering_with(frozen_states)``."""
        if not 0 < self.start < depth:
            return None
        self._check_frozen()
        slots = self.slots(batch)
        kept = [self._states.get(key) for key in self._keys(batch, slots)]
        if any(state is None for state in kept):
            return LayerEntry(self.start, None, capture=lambda hidden: self.keep(batch, hidden))
        self.served += len(kept)
        width = batch.input_ids.shape[1]
        if batch.packed:
            states = torch.cat(kept, dim=0).unsqueeze(0)  # type: ignore[arg-type]
        else:
            first = kept[0]
            states = first.new_zeros((batch.input_ids.shape[0], width, first.shape[-1]))  # type: ignore[union-attr]
            for (r, begin, end), state in zip(slots, kept):
                states[r, begin:end] = state
        return LayerEntry(self.start, states)

    def keep(self, batch: Batch, hidden: torch.Tensor) -> None:
        """Keep each row's slice of ``hidden`` (the input of layer ``start``), up to the cap."""
        slots = self.slots(batch)
        for key, (r, begin, end) in zip(self._keys(batch, slots), slots):
            if key in self._states:
                continue
            if self.tokens + (end - begin) > self.max_tokens:
                if not self._warned:
                    warnings.warn(
                        f"frozen-state reuse holds its cap of {self.max_tokens} token states; rows not kept yet run every layer",
                        stacklevel=2,
                    )
                    self._warned = True
                return
            self._states[key] = hidden[r, begin:end].detach().clone()
            self.tokens += end - begin
            self.computed += 1

    def clear(self) -> None:
        self._states.clear()
        self.tokens = self.served = self.computed = 0
