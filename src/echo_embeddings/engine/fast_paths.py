"""Which optimisations a forward can take on this model, and why not when it cannot: the template
prefix cache and packed (padding-free) batches; and the precision the decoder runs in. The engine reports this as ``fast_paths`` and in
its ``repr``, so nothing is switched off without the user being able to see it."""

from __future__ import annotations

from torch import nn

from . import precision
from .packing import supports_packing, uses_packed_attention, varlen_kernel
from .prefix_cache import prefix_cache_support


def why_no_prefix_cache(model: nn.Module, prefix_cache: bool) -> str | None:
    return "turned off (prefix_cache=False)" if not prefix_cache else prefix_cache_support(model)


def why_no_packing(model: nn.Module, packing: bool | None) -> str | None:
    if packing is False:
        return "turned off (packing=False)"
    if not supports_packing(model):
        return f"{type(model).__name__} does not support packed batches (soft-capped or custom attention)"
    if not uses_packed_attention(model):
        return (
            f"the model's attention implementation is {model.config._attn_implementation!r}; load it with "
            "attn_implementation='echo_packed' (echo_embeddings.load does) to allow packed batches"
        )
    param = next(model.parameters())
    if varlen_kernel(param.device, param.dtype) is None:
        return f"there is no packed-attention kernel for {param.device.type} {param.dtype} (CUDA needs bf16 or fp16)"
    return None


def packing_kernel(model: nn.Module, packing: bool | None) -> str | None:
    """The packed-attention kernel to use, or None for padded batches."""
    if why_no_packing(model, packing):
        return None
    param = next(model.parameters())
    return varlen_kernel(param.device, param.dtype)


def report(model: nn.Module, prefix_cache: bool, packing: bool | None) -> dict[str, str]:
    """``{"prefix_cache": "on" | "off: why", "packing": kernel | "off: why", "precision": "bfloat16" | ...}``."""
    no_cache, no_packing = why_no_prefix_cache(model, prefix_cache), why_no_packing(model, packing)
    return {
        "prefix_cache": f"off: {no_cache}" if no_cache else "on",
        "packing": f"off: {no_packing}" if no_packing else str(packing_kernel(model, packing)),
        "precision": precision.describe(model),
    }
