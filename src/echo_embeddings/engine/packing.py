"""Padding-free batches: all rows of a batch packed into one sequence, attention kept per row.

The decoder runs on ``[1, total_tokens]`` with positions restarting at every row, and the
attention function registered as ``"echo_packed"`` with transformers' ``AttentionInterface``
attends within each row only, using ``cu_seqlens`` boundaries. No token of padding is computed.
A cached template prefix joins every row's keys and values inside the same function.

The implementation is chosen once, when the model is loaded (``attn_implementation="echo_packed"``,
registered by :func:`register_packed_attention`);
a model handed to the engine keeps its own implementation, and packs only if its owner chose
ours. The row layout of each forward travels as a call keyword argument (``echo_packing``), the
way transformers hands ``cu_seq_lens_q`` to its flash-attention path, so nothing about the model
changes between forwards and no lock is needed. Without that argument (padded batches, the
prefix forward, anyone else's call) the function is plain SDPA, and its mask function, registered
under the same name, is transformers' SDPA mask.

Kernels, in order of preference: torch's ``varlen_attn`` (CUDA, fp16/bf16), flash-attn's
``flash_attn_varlen_func`` (CUDA, when installed), and on CPU one ``scaled_dot_product_attention``
per group of equally long rows. Models with attention soft-capping, or a sliding window shorter
than a row, keep the padded path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .prefix_cache import KeyValues

IMPLEMENTATION = "echo_packed"


@dataclass
class Packing:
    """Row boundaries of a packed batch and the prefix every row continues (per layer)."""

    lengths: list[int]
    cu_seqlens: torch.Tensor  # int32 [rows + 1] on the device
    kernel: str
    prefix: KeyValues | None = None
    calls: int = 0
    """How many attention layers ran packed: the engine checks that every layer got the layout."""
    _groups: list[tuple[int, int, torch.Tensor, torch.Tensor | None]] | None = field(default=None, repr=False)
    _joined: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    def joined_layout(self, p: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Where the new tokens and the ``p`` prefix tokens of every row go when the prefix is
        joined in front of each row, and the key boundaries; the same for every layer, so built once."""
        if self._joined is None:
            lengths = torch.tensor(self.lengths, device=device)
            rows = torch.arange(len(self.lengths), device=device)
            # Row r's tokens come after r + 1 prefixes.
            new_slots = torch.arange(int(lengths.sum()), device=device) + (torch.repeat_interleave(rows, lengths) + 1) * p
            prefix_slots = ((self.cu_seqlens[:-1].long() + rows * p)[:, None] + torch.arange(p, device=device)).reshape(-1)
            cu_k = torch.nn.functional.pad(torch.cumsum(lengths + p, 0), (1, 0)).to(torch.int32)
            self._joined = (new_slots, prefix_slots, cu_k)
        return self._joined

    def groups(self, device: torch.device) -> list[tuple[int, int, torch.Tensor, torch.Tensor | None]]:
        """Per distinct row length: (length, rows, token positions, prefix mask), built once per forward."""
        if self._groups is None:
            starts = self.cu_seqlens.tolist()
            by_length: dict[int, list[int]] = {}
            for row, length in enumerate(self.lengths):
                by_length.setdefault(length, []).append(row)
            p = self.prefix[0][0].shape[2] if self.prefix else 0
            self._groups = []
            for length, rows in by_length.items():
                index = torch.cat([torch.arange(starts[r], starts[r] + length, device=device) for r in rows])
                # Bottom-right causal: every new token sees the whole prefix and its row up to itself.
                mask = torch.ones(length, p + length, dtype=torch.bool, device=device).tril(p) if p else None
                self._groups.append((length, len(rows), index, mask))
        return self._groups


def varlen_kernel(device: torch.device, dtype: torch.dtype) -> str | None:
    """The fastest packed-attention kernel for this device and dtype, or None (padded path)."""
    if device.type == "cpu":
        return "grouped-sdpa"
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return None
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401

        return "torch-varlen"
    except ImportError:
        pass
    try:
        from flash_attn import flash_attn_varlen_func  # noqa: F401

        return "flash-attn"
    except ImportError:
        return None


def supports_packing(model: nn.Module) -> bool:
    """Decoders that route attention through transformers' interface without soft-capping."""
    config = getattr(model, "config", None)
    if config is None or not getattr(type(model), "_supports_attention_backend", False):
        return False
    return not getattr(config, "attn_logit_softcapping", None)


def uses_packed_attention(model: nn.Module) -> bool:
    """Whether the model's owner chose the ``echo_packed`` attention implementation."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None) == IMPLEMENTATION


def fits_window(model: nn.Module, longest: int) -> bool:
    """A sliding window shorter than the longest row would change the result: stay padded."""
    window = getattr(model.config, "sliding_window", None)
    return not window or longest <= window


def _packed_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    echo_packing: Packing | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """With ``echo_packing``: ``[1, heads, T, dim]`` in, ``[1, T, heads, dim]`` out, attending within
    each packed row. Without it: transformers' SDPA attention, unchanged."""
    if echo_packing is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    prefix = echo_packing.prefix[module.layer_idx] if echo_packing.prefix is not None else None  # type: ignore[attr-defined]
    q, k, v = query[0], key[0], value[0]  # [heads, T, dim]
    out = _KERNELS[echo_packing.kernel](q, k, v, echo_packing, prefix, scaling)
    echo_packing.calls += 1
    return out.unsqueeze(0), None


def _grouped_sdpa(q, k, v, packing: Packing, prefix, scaling) -> torch.Tensor:
    """Rows of equal length attend in one batched call (sorted batches have few distinct lengths)."""
    out = torch.empty(q.shape[1], q.shape[0], q.shape[2], dtype=q.dtype, device=q.device)
    gqa = q.shape[0] != k.shape[0]
    for length, rows, index, mask in packing.groups(q.device):
        qs = q[:, index].view(q.shape[0], rows, length, -1).transpose(0, 1)
        ks = k[:, index].view(k.shape[0], rows, length, -1).transpose(0, 1)
        vs = v[:, index].view(v.shape[0], rows, length, -1).transpose(0, 1)
        if prefix is not None:
            ks = torch.cat([prefix[0].expand(rows, -1, -1, -1), ks], dim=2)
            vs = torch.cat([prefix[1].expand(rows, -1, -1, -1), vs], dim=2)
        o = nn.functional.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, is_causal=mask is None, scale=scaling, enable_gqa=gqa)
        out[index] = o.transpose(1, 2).reshape(rows * length, q.shape[0], q.shape[2])
    return out


def _with_prefix(k, v, packing: Packing, prefix) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Keys and values ``[T + rows * P, heads, dim]`` with the prefix in front of every row."""
    k, v = k.transpose(0, 1), v.transpose(0, 1)  # [T, heads, dim]
    if prefix is None:
        return k, v, packing.cu_seqlens, max(packing.lengths)
    pk, pv = (t[0].transpose(0, 1) for t in prefix)  # [P, heads, dim]
    new_slots, prefix_slots, cu_k = packing.joined_layout(pk.shape[0], k.device)
    rows = len(packing.lengths)
    keys = k.new_empty(new_slots.shape[0] + prefix_slots.shape[0], k.shape[1], k.shape[2])
    values = v.new_empty(keys.shape)
    keys[new_slots], values[new_slots] = k, v
    keys[prefix_slots], values[prefix_slots] = pk.repeat(rows, 1, 1), pv.repeat(rows, 1, 1)
    return keys, values, cu_k, max(packing.lengths) + pk.shape[0]


def _torch_varlen(q, k, v, packing: Packing, prefix, scaling) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    keys, values, cu_k, max_k = _with_prefix(k, v, packing, prefix)
    max_q = max(packing.lengths)
    # window (-1, 0) is causal aligned to the end of each key row, so the prefix stays visible.
    return varlen_attn(
        q.transpose(0, 1), keys, values, packing.cu_seqlens, cu_k, max_q, max_k,
        scale=scaling, window_size=(-1, 0), enable_gqa=q.shape[0] != k.shape[0],
    )


def _flash_attn(q, k, v, packing: Packing, prefix, scaling) -> torch.Tensor:
    from flash_attn import flash_attn_varlen_func

    keys, values, cu_k, max_k = _with_prefix(k, v, packing, prefix)
    return flash_attn_varlen_func(
        q.transpose(0, 1), keys, values, packing.cu_seqlens, cu_k, max(packing.lengths), max_k,
        softmax_scale=scaling, causal=True,
    )


_KERNELS: dict[str, Callable[..., torch.Tensor]] = {
    "grouped-sdpa": _grouped_sdpa,
    "torch-varlen": _torch_varlen,
    "flash-attn": _flash_attn,
}


def register_packed_attention() -> str:
    """Register ``"echo_packed"`` with transformers' attention and mask interfaces (idempotent) and
    return the name. Called before a model is loaded with it, never at import.

    The mask function is SDPA's, so that padded batches and other callers get their causal and
    padding masks. A packed forward passes an all-ones 2D mask with no cache, for which SDPA's mask
    function returns None (causal skip): no ``[T, T]`` mask is ever built."""
    AttentionInterface.register(IMPLEMENTATION, _packed_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)
    return IMPLEMENTATION
