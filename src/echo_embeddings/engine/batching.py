"""Batches: one text laid into its templates (rows), and rows into padded or packed tensors.
Which texts share a batch is decided in :mod:`echo_embeddings.engine.schedule`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from .template import Pooling


@dataclass
class Batch:
    """Tensors for one forward plus where to pool.

    Padded (``attention_mask`` set, right-padded unless the engine says left): ``[rows, width]``.
    Packed (``cu_seqlens`` set): every row back to back in ``[1, total]``, and positions are
    positions in the packed sequence. ``pool_index`` is ``[2, pooled tokens]``: the row and
    position of every pooled token (compact, so a large packed batch ships no dense mask).
    Rows are template-major: with ``groups`` templates (MetaEOL) row ``g * n + i`` is text
    ``i`` in template ``g``, and the pooled vectors of a text's rows are averaged.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    pool_index: torch.Tensor
    last_index: torch.Tensor
    placeholder_index: torch.Tensor | None
    pooling: Pooling
    groups: int = 1
    prefix: tuple[int, ...] = ()
    """Ids every row starts with, left out of ``input_ids``: their keys and values come from the cache."""
    position_ids: torch.Tensor | None = None
    cu_seqlens: torch.Tensor | None = None
    segments: torch.Tensor | None = None
    """Late chunking: ``[pooled tokens]``, the span of its row each pooled token belongs to; the
    batch then pools one vector per (row, span) instead of one per row."""

    _TENSORS = ("input_ids", "attention_mask", "pool_index", "last_index", "placeholder_index", "position_ids", "cu_seqlens", "segments")

    @property
    def packed(self) -> bool:
        return self.cu_seqlens is not None

    def to(self, device: torch.device) -> Batch:
        moved = {k: getattr(self, k).to(device, non_blocking=True) for k in self._TENSORS if getattr(self, k) is not None}
        return replace(self, **moved)

    def as_features(self) -> dict[str, Any]:
        """The batch as a sentence-transformers features dict. Pooled tokens and the placeholder
        travel as per-token masks shaped like ``input_ids``, so that sentence-transformers can cut
        a batch into mini-batches of rows (its cached losses do): padded tensors along their first
        axis, packed ones by ``cu_seq_lens_q``, the name its flattened batches use. Late-chunking
        batches keep the compact index (a token may be pooled into two spans); they are not cut."""
        features: dict[str, Any] = {"input_ids": self.input_ids, "pooling": self.pooling, "groups": self.groups, "prefix": self.prefix}
        for key in ("attention_mask", "position_ids"):
            if getattr(self, key) is not None:
                features[key] = getattr(self, key)
        if self.packed:
            features["cu_seq_lens_q"] = self.cu_seqlens
        if self.groups > 1:  # lets from_features tell a cut through the template-major rows
            rows = len(self.last_index)
            features["row_group"] = torch.arange(self.groups).repeat_interleave(rows // self.groups)
        if self.segments is not None:
            features.update(pool_index=self.pool_index, last_index=self.last_index, segments=self.segments)
            if self.placeholder_index is not None:
                features["placeholder_index"] = self.placeholder_index
            return features
        rows = torch.zeros_like(self.pool_index[0]) if self.packed else self.pool_index[0]
        pooled = torch.zeros_like(self.input_ids, dtype=torch.bool)
        pooled[rows, self.pool_index[1]] = True
        features["pooled_mask"] = pooled
        if self.placeholder_index is not None:
            placeholder = torch.zeros_like(self.input_ids, dtype=torch.bool)
            if self.packed:
                placeholder[0, self.placeholder_index] = True
            else:
                placeholder[torch.arange(len(self.placeholder_index)), self.placeholder_index] = True
            features["placeholder_mask"] = placeholder
        return features

    @classmethod
    def from_features(cls, features: dict[str, Any]) -> Batch:
        """The inverse of :meth:`as_features` (also for a mini-batch cut from it)."""
        common = {key: features.get(key) for key in ("input_ids", "attention_mask", "position_ids", "pooling", "groups", "prefix")}
        cu_seqlens = features.get("cu_seq_lens_q")
        groups = features.get("groups", 1)
        if groups > 1:
            rows = len(cu_seqlens) - 1 if cu_seqlens is not None else features["input_ids"].shape[0]
            expected = torch.arange(groups).repeat_interleave(rows // groups)
            if rows % groups or not torch.equal(features["row_group"].cpu(), expected):
                raise ValueError(
                    f"this batch of a {groups}-template strategy (MetaEOL) was cut into mini-batches of rows, which splits its "
                    "texts' templates apart; use a loss that embeds whole batches (MultipleNegativesRankingLoss, not a cached loss)"
                )
        if "pooled_mask" not in features:
            compact = {key: features.get(key) for key in ("pool_index", "last_index", "placeholder_index", "segments")}
            return cls(**common, **compact, cu_seqlens=cu_seqlens)  # type: ignore[arg-type]
        mask = features["pooled_mask"]
        placeholder = features.get("placeholder_mask")
        if cu_seqlens is not None:
            positions = mask[0].nonzero().squeeze(1)
            rows = torch.searchsorted(cu_seqlens[1:].long(), positions, right=True)
            count = len(cu_seqlens) - 1
            placeholder_index = placeholder[0].nonzero().squeeze(1) if placeholder is not None else None
        else:
            rows, positions = mask.nonzero(as_tuple=True)
            count = mask.shape[0]
            placeholder_index = placeholder.long().argmax(1) if placeholder is not None else None
        last = torch.zeros(count, dtype=torch.long, device=mask.device).scatter_reduce(0, rows, positions, "amax", include_self=False)
        return cls(**common, pool_index=torch.stack([rows, positions]), last_index=last, placeholder_index=placeholder_index, cu_seqlens=cu_seqlens)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Row:
    """One text laid into one template: ids, pooled positions, placeholder position, and how
    many leading ids are the template's constant prefix. ``segments`` (late chunking) gives,
    for each pooled position, the span it is pooled into; a position may be listed more than once."""

    ids: list[int]
    pooled: list[int]
    placeholder: int | None = None
    constant: int = 0
    segments: list[int] | None = None


Prepared = tuple[Row, ...]
"""One text in each of its task's templates (one row, or eight for MetaEOL)."""


def pack_rows(rows: Sequence[Row], pooling: Pooling, groups: int, prefix: tuple[int, ...]) -> Batch:
    """All rows back to back in one sequence, positions restarting after the cached prefix."""
    lengths = [len(r.ids) for r in rows]
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    input_ids = torch.tensor([[t for r in rows for t in r.ids]], dtype=torch.long)
    position_ids = torch.tensor([[len(prefix) + i for n in lengths for i in range(n)]], dtype=torch.long)
    last = torch.tensor([start + r.pooled[-1] for r, start in zip(rows, starts)], dtype=torch.long)
    placeholder = None
    if rows[0].placeholder is not None:
        placeholder = torch.tensor([start + r.placeholder for r, start in zip(rows, starts)], dtype=torch.long)  # type: ignore[operator]
    cu_seqlens = torch.tensor(starts, dtype=torch.int32)
    return Batch(input_ids, None, pool_index(rows, starts), last, placeholder, pooling, groups, prefix, position_ids, cu_seqlens, segments(rows))


def pad_rows(rows: Sequence[Row], pooling: Pooling, groups: int, prefix: tuple[int, ...], pad_id: int, padding_side: str) -> Batch:
    """Rows into a ``[rows, width]`` batch with an attention mask, padded on ``padding_side``."""
    longest = max(len(r.ids) for r in rows)
    input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), longest), dtype=torch.long)
    last = torch.empty(len(rows), dtype=torch.long)
    offsets = [longest - len(r.ids) if padding_side == "left" else 0 for r in rows]
    for i, (r, off) in enumerate(zip(rows, offsets)):
        input_ids[i, off : off + len(r.ids)] = torch.tensor(r.ids)
        attention[i, off : off + len(r.ids)] = 1
        last[i] = off + r.pooled[-1]
    placeholder = None
    if rows[0].placeholder is not None:
        placeholder = torch.tensor([off + r.placeholder for r, off in zip(rows, offsets)], dtype=torch.long)  # type: ignore[operator]
    return Batch(input_ids, attention, pool_index(rows, offsets), last, placeholder, pooling, groups, prefix, segments=segments(rows))


def cut_prefix(rows: Sequence[Row], prefix: tuple[int, ...]) -> list[Row]:
    """The rows without the shared ``prefix`` (its keys and values come from the cache)."""
    cut = len(prefix)
    return [Row(r.ids[cut:], [p - cut for p in r.pooled], None if r.placeholder is None else r.placeholder - cut, 0, r.segments) for r in rows]


def pool_index(rows: Sequence[Row], offsets: Sequence[int]) -> torch.Tensor:
    """``[2, pooled tokens]``: each pooled token's row and its position (the row's offset plus
    its position in the row)."""
    row = [i for i, r in enumerate(rows) for _ in r.pooled]
    position = [off + p for r, off in zip(rows, offsets) for p in r.pooled]
    return torch.tensor([row, position], dtype=torch.long)


def segments(rows: Sequence[Row]) -> torch.Tensor | None:
    """The span index of every pooled token (in ``pool_index`` order), or None outside late chunking."""
    if rows[0].segments is None:
        return None
    return torch.tensor([s for r in rows for s in r.segments], dtype=torch.long)


def shared_prefix(rows: Sequence[Row]) -> tuple[int, ...]:
    """The longest constant start common to all rows that is neither pooled, nor the placeholder,
    nor the whole row (at least one token must go through the batch forward)."""
    first = rows[0].ids
    n = min(min(r.constant, r.pooled[0], len(r.ids) - 1, len(first) if r.placeholder is None else r.placeholder) for r in rows)
    for r in rows:
        while n and r.ids[:n] != first[:n]:
            n -= 1
    return tuple(first[:n])
