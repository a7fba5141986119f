"""Pooling: the mean over a row's pooled span or its last token, in fp32, averaged over a text's
templates; for late chunking, the mean over each of a row's spans."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .batching import Batch


def pool(hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
    """``[texts, dim]`` from hidden states ``[rows, width, dim]`` (padded) or ``[1, tokens, dim]`` (packed).

    ``batch.pool_index`` gives every pooled token's row and position; with ``batch.groups``
    templates per text (MetaEOL) the rows of one text are averaged.
    """
    hidden = hidden.float()
    rows = batch.last_index.shape[0]
    if batch.segments is not None:
        return pool_spans(hidden, batch)
    if batch.pooling == "last":
        pooled = hidden[0, batch.last_index] if batch.packed else hidden[torch.arange(rows, device=hidden.device), batch.last_index]
    else:
        # The mask is built where the hidden states are; a matmul keeps the sum deterministic.
        mask = torch.zeros(rows, hidden.shape[1], dtype=hidden.dtype, device=hidden.device)
        mask[batch.pool_index[0], batch.pool_index[1]] = 1.0
        summed = mask @ hidden[0] if batch.packed else (mask.unsqueeze(1) @ hidden).squeeze(1)
        pooled = summed / mask.sum(dim=1, keepdim=True)
    if batch.groups > 1:
        pooled = pooled.view(batch.groups, -1, pooled.shape[-1]).mean(dim=0)
    return pooled


def pool_spans(hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
    """``[texts, spans, dim]``: the mean of each span's tokens (late chunking). A row's spans are
    numbered by ``batch.segments``; a span with no token in a row gives a zero vector there."""
    rows = batch.last_index.shape[0]
    spans = int(batch.segments.max()) + 1 if batch.segments.numel() else 1  # type: ignore[union-attr]
    mask = torch.zeros(rows * spans, hidden.shape[1], dtype=hidden.dtype, device=hidden.device)
    mask[batch.pool_index[0] * spans + batch.segments, batch.pool_index[1]] = 1.0
    summed = (mask @ hidden[0]) if batch.packed else (mask.view(rows, spans, -1) @ hidden)
    pooled = summed.view(rows, spans, -1) / mask.sum(dim=1).clamp(min=1).view(rows, spans, 1)
    if batch.groups > 1:
        pooled = pooled.view(batch.groups, -1, spans, pooled.shape[-1]).mean(dim=0)
    return pooled
