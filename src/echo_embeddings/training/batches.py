"""Token-budget training batches: each step holds at most ``max_tokens`` prompt tokens (every text
of a row in its template, what the forward computes), so a step's cost and memory stay bounded
whatever the mix of short and long texts, and rows of similar length share a step.

Rows are shuffled each epoch (seeded by ``seed`` and the epoch), cut into pools of
``pool_batches * batch_size`` rows, sorted by length inside a pool, then cut greedily into batches
of at most ``batch_size`` rows and ``max_tokens`` tokens; the batches are shuffled again, so
consecutive steps do not climb in length. A row longer than the budget gets a step of its own.
With ``no_duplicates`` (in-batch negatives) no text appears twice in a batch, as with
sentence-transformers' ``NoDuplicatesBatchSampler``: a row that would repeat a text waits for the
next batch of its pool.

For the stock trainer, pass it as ``batch_sampler`` through :func:`token_budget_sampler`, or use
``train(..., max_batch_tokens=N)`` / ``echo-embeddings train --max-batch-tokens N``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
from sentence_transformers.base.sampler import DefaultBatchSampler


class TokenBudgetBatchSampler(DefaultBatchSampler):
    """Batches of at most ``batch_size`` rows and ``max_tokens`` tokens (see the module docstring).

    Args:
        dataset: the training dataset (its text columns are read for ``no_duplicates``).
        batch_size: most rows in a batch.
        drop_last: drop the epoch's last batch when it is under both limits.
        valid_label_columns: label columns, never read as texts.
        generator: unused (the order comes from ``seed`` and the epoch); accepted for the trainer.
        seed: seed of the order.
        lengths: tokens of each row, all its texts in their templates.
        max_tokens: the token budget of a batch.
        no_duplicates: keep every text unique within a batch (for in-batch negatives).
        pool_batches: batches' worth of rows sorted by length together.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        drop_last: bool,
        valid_label_columns: list[str] | None = None,
        generator: Any = None,
        seed: int = 0,
        *,
        lengths: Sequence[int],
        max_tokens: int,
        no_duplicates: bool = False,
        pool_batches: int = 50,
    ) -> None:
        super().__init__(dataset, batch_size=batch_size, drop_last=drop_last, valid_label_columns=valid_label_columns, generator=generator, seed=seed)
        if len(lengths) != len(dataset):
            raise ValueError(f"lengths has {len(lengths)} entries for a dataset of {len(dataset)} rows")
        if max_tokens < 1 or batch_size < 1:
            raise ValueError(f"max_tokens and batch_size must be positive, got {max_tokens} and {batch_size}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.max_tokens = max_tokens
        self.pool = max(pool_batches, 1) * batch_size
        self.texts: list[tuple] | None = None
        if no_duplicates:
            columns = [c for c in dataset.column_names if c not in set(valid_label_columns or ())]
            self.texts = list(zip(*(dataset[c] for c in columns)))
        self._plans: dict[int, list[list[int]]] = {}

    def plan(self, epoch: int) -> list[list[int]]:
        """The batches of one epoch (the same for the same seed and epoch)."""
        if epoch not in self._plans:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.lengths))
            batches: list[list[int]] = []
            for start in range(0, len(order), self.pool):
                pool = order[start : start + self.pool]
                batches.extend(self._cut(pool[np.argsort(self.lengths[pool], kind="stable")].tolist()))
            if self.drop_last and batches and len(batches[-1]) < self.batch_size and self.lengths[batches[-1]].sum() < self.max_tokens:
                batches.pop()
            self._plans = {epoch: [batches[i] for i in rng.permutation(len(batches))]}
        return self._plans[epoch]

    def _cut(self, rows: list[int]) -> list[list[int]]:
        batches: list[list[int]] = []
        waiting: list[int] = rows
        while waiting:
            batch: list[int] = []
            tokens = 0
            seen: set = set()
            later: list[int] = []
            for i, row in enumerate(waiting):
                length = int(self.lengths[row])
                if batch and (len(batch) == self.batch_size or tokens + length > self.max_tokens):
                    later.extend(waiting[i:])
                    break
                texts = self.texts[row] if self.texts is not None else ()
                if any(t in seen for t in texts):
                    later.append(row)  # repeats a text of this batch: the next one takes it
                    continue
                batch.append(row)
                tokens += length
                seen.update(texts)
            batches.append(batch)
            waiting = later
        return batches

    def __iter__(self):
        yield from self.plan(self.epoch)

    def __len__(self) -> int:
        return len(self.plan(self.epoch))


def row_lengths(model: Any, columns: dict[str, Sequence[str]], routes: dict[str, str]) -> list[int]:
    """Tokens each row costs: every column's text laid into the template of its route (``query``,
    ``document`` or none), without the constant prefix the prefix cache serves."""
    engine = model[0].engine
    total = np.zeros(len(next(iter(columns.values()))), dtype=np.int64)
    for name, texts in columns.items():
        prepared = engine.prepare(list(texts), routes.get(name))
        total += [sum(len(row.ids) - row.constant for row in rows) for rows in prepared]
    return total.tolist()


def token_budget_sampler(model: Any, dataset: Any, max_tokens: int, *, routes: dict[str, str] | None = None, no_duplicates: bool = False) -> Callable[..., TokenBudgetBatchSampler]:
    """A ``batch_sampler`` for ``SentenceTransformerTrainingArguments``: the trainer calls it with
    the dataset and batch size. ``routes`` is the trainer's ``router_mapping`` (column to task)."""
    routes = routes or {}
    label_columns = {"score", "label", "labels"}
    texts = {c: dataset[c] for c in dataset.column_names if c not in label_columns}
    return partial(TokenBudgetBatchSampler, lengths=row_lengths(model, texts, routes), max_tokens=max_tokens, no_duplicates=no_duplicates)
