"""The batch schedule: which texts share a forward, in what order, and what happens when a batch
does not fit in memory.

Texts are sorted by token count after the template is applied (longest first) and consecutive
texts fill a batch until its padded size (rows x width) would pass the token budget or the
count cap. Every surface goes through :func:`run_batches`, so one rule decides. A batch that
runs out of memory is retried in halves (the vectors do not depend on the batch).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .batching import Batch, Prepared


def width(item: Prepared) -> int:
    return max(len(r.ids) for r in item)


def longest_first(prepared: Sequence[Prepared]) -> list[int]:
    """Indices of ``prepared`` by token count, longest first (stable for equal lengths)."""
    return sorted(range(len(prepared)), key=lambda i: -width(prepared[i]))


def token_budget_batches(order: list[int], prepared: Sequence[Prepared], batch_size: int, max_tokens: int | None) -> list[list[int]]:
    """Consecutive runs of the longest-first ``order``, capped by count and by padded tokens
    (rows x width, every template row of a text counted). A text longer than the budget runs alone."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        rows = len(prepared[i])
        longest = width(prepared[current[0]]) if current else width(prepared[i])
        if current and (len(current) >= batch_size or (max_tokens is not None and (len(current) + 1) * rows * longest > max_tokens)):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def run_batches(
    prepared: Sequence[Prepared],
    collate: Callable[[list[Prepared]], Batch],
    forward: Callable[[Batch], torch.Tensor],
    *,
    batch_size: int,
    max_tokens: int,
    empty: Callable[[], torch.Tensor],
    progress: tqdm | None = None,
) -> torch.Tensor:
    """Sort by token count, fill batches to the token budget, ``forward`` each collated batch, and
    return the rows in input order (``empty()`` when there are none)."""
    pieces: list[tuple[list[int], torch.Tensor]] = []
    for chunk in token_budget_batches(longest_first(prepared), prepared, batch_size, max_tokens):
        pieces.append((chunk, forward_halving([prepared[i] for i in chunk], collate, forward)))
        if progress is not None:
            progress.update(len(chunk))
    if not pieces:
        return empty()
    first = pieces[0][1]
    out = first.new_empty((len(prepared), *first.shape[1:]))
    for chunk, vectors in pieces:
        out[torch.tensor(chunk, device=out.device)] = vectors
    return out


def forward_halving(items: list[Prepared], collate: Callable[[list[Prepared]], Batch], forward: Callable[[Batch], torch.Tensor]) -> torch.Tensor:
    """Forward a batch; on out-of-memory, warn and retry its halves (same vectors: batches do not
    change results), down to a single text, whose out-of-memory error is raised."""
    try:
        return forward(collate(items))
    except torch.OutOfMemoryError:
        if len(items) == 1:
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        warnings.warn(f"Out of memory on a batch of {len(items)} texts; retrying it in halves", stacklevel=3)
        half = len(items) // 2
        return torch.cat([forward_halving(items[:half], collate, forward), forward_halving(items[half:], collate, forward)])
