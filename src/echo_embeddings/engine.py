"""The encoder engine: tokenize each text once, lay it into its template, batch by length, forward, pool.

Every surface (sentence-transformers, LangChain, LlamaIndex, the CLI) goes through
:class:`Embedder`; none of them knows about templates, spans or layers.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .hooks import LayerPlan, forward_hidden, resolve_output_layer
from .packing import Packing, fits_window, model_lock, packed, supports_packing, varlen_kernel
from .prefix_cache import PrefixCache, supports_prefix_cache
from .templates import DEFAULT_INSTRUCTION, Layout, PieceTokenizer, Pooling, Preset, Template, get_preset

DEFAULT_MAX_SEQ_LENGTH = 512
DEFAULT_BATCH_TOKENS = {"cpu": 2048, "cuda": 32768}
"""Token budget of a batch (rows x width) on CPU / CUDA: measured best for SmolLM2 on 2 cores;
GPUs need large batches to fill. A single row longer than the budget still runs alone."""


def check_texts(texts: object, first_index: int = 0) -> list[str]:
    """Fail before any model work if an item is not a string, naming its index and type."""
    if isinstance(texts, str):
        raise TypeError("Expected a list of strings, got a single str; wrap it in a list")
    texts = list(texts)  # type: ignore[call-overload]
    for i, text in enumerate(texts, first_index):
        if not isinstance(text, str):
            raise TypeError(f"Input {i} is {type(text).__name__} ({text!r:.60}); every input must be a str")
    return texts


def chunked(texts: Iterable[str], chunk_size: int) -> Iterator[list[str]]:
    """Checked lists of up to ``chunk_size`` texts, read lazily from any iterable."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if isinstance(texts, str):
        raise TypeError("Expected an iterable of strings, got a single str; wrap it in a list")
    items = iter(texts)
    done = 0
    while chunk := check_texts(islice(items, chunk_size), first_index=done):
        yield chunk
        done += len(chunk)


def known_length(texts: Iterable[str]) -> int | None:
    return len(texts) if isinstance(texts, Sized) else None


def as_preset(strategy: str | Preset | Template, pooling: Pooling = "mean") -> Preset:
    """A registered name, a Preset, a Template, or a template string such as ``"Say: {x*}"``."""
    if isinstance(strategy, Preset):
        return strategy
    if isinstance(strategy, str) and "{" in strategy:
        strategy = Template.parse(strategy, pooling)
    if isinstance(strategy, Template):
        return Preset(strategy.spec or "custom", (strategy,), token_prepending=strategy.has_placeholder)
    return get_preset(strategy)


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

    _TENSORS = ("input_ids", "attention_mask", "pool_index", "last_index", "placeholder_index", "position_ids", "cu_seqlens")
    _KEYS = (*_TENSORS, "pooling", "groups", "prefix")

    @property
    def packed(self) -> bool:
        return self.cu_seqlens is not None

    def to(self, device: torch.device) -> Batch:
        moved = {k: getattr(self, k).to(device, non_blocking=True) for k in self._TENSORS if getattr(self, k) is not None}
        return replace(self, **moved)

    def as_features(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self._KEYS if getattr(self, key) is not None}

    @classmethod
    def from_features(cls, features: dict[str, Any]) -> Batch:
        return cls(**{key: features.get(key) for key in cls._KEYS})


@dataclass(frozen=True)
class Row:
    """One text laid into one template: ids, pooled positions, placeholder position, and how
    many leading ids are the template's constant prefix."""

    ids: list[int]
    pooled: list[int]
    placeholder: int | None = None
    constant: int = 0


Prepared = tuple[Row, ...]
"""One text in each of its task's templates (one row, or eight for MetaEOL)."""


@dataclass
class Embedder:
    """A decoder plus a strategy: the one pooling core behind every surface."""

    model: nn.Module
    tokenizer: Any
    preset: Preset
    plan: LayerPlan = field(default_factory=LayerPlan)
    instruction: str = DEFAULT_INSTRUCTION
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH
    placeholder_token: str | int | None = None
    padding_side: str = "right"
    prefix_cache: bool = True
    """Compute the template's constant prefix once and reuse its keys and values (same vectors)."""
    packing: bool | None = None
    """Pack batches without padding: None wherever the model and a kernel allow, True always (or
    an error), False never."""

    def __post_init__(self) -> None:
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        self.pieces = PieceTokenizer(self.tokenizer, self.placeholder_token)
        self._layouts: dict[tuple[Template, str, bool], Layout] = {}
        self._prefixes = PrefixCache()
        self.prefix_cache = self.prefix_cache and supports_prefix_cache(self.model)
        self._packable = supports_packing(self.model)
        if self.packing and not self._packable:
            raise ValueError(f"{type(self.model).__name__} does not support packed batches (soft-capped or custom attention)")
        if self.plan.token_prepending and not self.preset.token_prepending:
            raise ValueError(f"tp_layers are set but strategy {self.preset.name!r} has no token prepending; use a '+tp' strategy")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def pooling(self, task: str | None = None) -> Pooling:
        return self.preset.templates(task)[0].pooling

    def layouts(self, task: str | None = None, instruction: str | None = None) -> list[Layout]:
        instruction = self.instruction if instruction is None else instruction
        # Token prepending off (or start == stop): the placeholder is left out, so the
        # sequence is exactly the base prompt's.
        placeholder = self.plan.token_prepending
        out = []
        for template in self.preset.templates(task):
            key = (template, instruction, placeholder)
            if key not in self._layouts:
                self._layouts[key] = self.pieces.layout(template, instruction, placeholder)
            out.append(self._layouts[key])
        return out

    def prepare(self, texts: Sequence[str], task: str | None = None, instruction: str | None = None) -> list[Prepared]:
        """Tokenize each text once, truncate it so every copy fits, and lay it into the templates."""
        texts = check_texts(texts)
        layouts = self.layouts(task, instruction)
        budget = min((self.max_seq_length - lay.fixed_length) // lay.template.copies for lay in layouts)
        if budget < 1:
            longest = max(lay.fixed_length for lay in layouts)
            raise ValueError(f"The template alone takes {longest} tokens, leaving no room for the text within max_seq_length={self.max_seq_length}")
        encoded = {lead: self.pieces.encode_inputs(texts, lead) for lead in {lay.lead for lay in layouts}}
        truncated = sum(len(ids) > budget for ids in next(iter(encoded.values())))
        if truncated:
            warnings.warn(
                f"{truncated} of {len(texts)} inputs were longer than {budget} tokens and were truncated before "
                f"repetition so that the prompt fits max_seq_length={self.max_seq_length}",
                stacklevel=3,
            )
        constant = [len(lay.constant_prefix) for lay in layouts]
        return [
            tuple(Row(*lay.build(encoded[lay.lead][i][:budget]), constant=c) for lay, c in zip(layouts, constant))
            for i in range(len(texts))
        ]

    def collate(self, items: Sequence[Prepared], pooling: Pooling) -> Batch:
        """Rows into tensors: packed where a kernel allows, else padded. With the prefix cache
        on, the shared constant prefix is cut off (its keys and values come from the cache)."""
        rows = [item[g] for g in range(len(items[0])) for item in items]
        prefix = _shared_prefix(rows) if self.prefix_cache else ()
        if prefix:
            cut = len(prefix)
            rows = [
                Row(r.ids[cut:], [p - cut for p in r.pooled], None if r.placeholder is None else r.placeholder - cut)
                for r in rows
            ]
        longest = max(len(r.ids) for r in rows)
        if self._kernel() and fits_window(self.model, longest + len(prefix)):
            return _pack(rows, pooling, len(items[0]), prefix)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), longest), pad if pad is not None else 0, dtype=torch.long)
        attention = torch.zeros((len(rows), longest), dtype=torch.long)
        last = torch.empty(len(rows), dtype=torch.long)
        offsets = [longest - len(r.ids) if self.padding_side == "left" else 0 for r in rows]
        for i, (r, off) in enumerate(zip(rows, offsets)):
            input_ids[i, off : off + len(r.ids)] = torch.tensor(r.ids)
            attention[i, off : off + len(r.ids)] = 1
            last[i] = off + r.pooled[-1]
        placeholder = None
        if rows[0].placeholder is not None:
            placeholder = torch.tensor([off + r.placeholder for r, off in zip(rows, offsets)], dtype=torch.long)
        return Batch(input_ids, attention, _pool_index(rows, offsets), last, placeholder, pooling, len(items[0]), prefix)

    def tokenize(self, texts: Sequence[str], task: str | None = None, instruction: str | None = None) -> Batch:
        return self.collate(self.prepare(texts, task, instruction), self.pooling(task))

    def forward(self, batch: Batch) -> torch.Tensor:
        """Pooled embeddings ``[texts, dim]`` in fp32; differentiable (no inference mode here)."""
        depth = resolve_output_layer(self.model, self.plan.output_layer)[0]
        with model_lock(self.model):
            if batch.packed:
                kernel = self._kernel()
                if kernel is None:
                    raise ValueError("This batch is packed but packing is off or unsupported here; collate it again")
                lengths = batch.cu_seqlens.diff().tolist()  # type: ignore[union-attr]
                batch = batch.to(self.device)
                prefix = self._prefixes.key_values(self.model, batch.prefix, depth) if batch.prefix else None
                with packed(self.model, Packing(lengths, batch.cu_seqlens, prefix), kernel):  # type: ignore[arg-type]
                    hidden = forward_hidden(
                        self.model, batch.input_ids, None, self.plan, batch.last_index, batch.placeholder_index,
                        position_ids=batch.position_ids,
                    )
                return pool(hidden, batch)
            batch = batch.to(self.device)
            past = self._prefixes.past(self.model, batch.prefix, depth, batch.input_ids.shape[0]) if batch.prefix else None
            hidden = forward_hidden(
                self.model, batch.input_ids, batch.attention_mask, self.plan, batch.last_index, batch.placeholder_index, past
            )
            return pool(hidden, batch)

    def _kernel(self) -> str | None:
        """The packed-attention kernel to use, or None for padded batches."""
        if self.packing is False or not self._packable:
            return None
        param = next(self.model.parameters())
        kernel = varlen_kernel(param.device, param.dtype)
        if kernel is None and self.packing:
            raise ValueError(f"packing=True, but there is no packed-attention kernel for {param.device.type} {param.dtype} (CUDA needs bf16 or fp16)")
        return kernel

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str],
        task: str | None = None,
        *,
        instruction: str | None = None,
        batch_size: int = 256,
        max_batch_tokens: int | None = None,
        normalize: bool = False,
        show_progress_bar: bool = False,
    ) -> torch.Tensor:
        """Embed ``texts`` in input order; batches are length-sorted by token count."""
        texts = check_texts(texts)
        with tqdm(total=len(texts), desc="Embedding", disable=not show_progress_bar, unit="text") as bar:
            return self._encode(texts, task, instruction, batch_size, max_batch_tokens, normalize, bar)

    def stream(
        self,
        texts: Iterable[str],
        task: str | None = None,
        *,
        chunk_size: int = 4096,
        instruction: str | None = None,
        batch_size: int = 256,
        max_batch_tokens: int | None = None,
        normalize: bool = False,
        show_progress_bar: bool = False,
    ) -> Iterator[torch.Tensor]:
        """Embed an iterable of any length, ``chunk_size`` texts at a time, yielding ``[chunk, dim]``
        in input order. Memory is bounded by the chunk: the input is read lazily."""
        with tqdm(total=known_length(texts), desc="Embedding", disable=not show_progress_bar, unit="text") as bar:
            for chunk in chunked(texts, chunk_size):
                with torch.inference_mode():
                    yield self._encode(chunk, task, instruction, batch_size, max_batch_tokens, normalize, bar)

    def _encode(
        self,
        texts: Sequence[str],
        task: str | None,
        instruction: str | None,
        batch_size: int,
        max_batch_tokens: int | None,
        normalize: bool,
        bar: tqdm,
    ) -> torch.Tensor:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if max_batch_tokens is None:
            max_batch_tokens = DEFAULT_BATCH_TOKENS.get(self.device.type, DEFAULT_BATCH_TOKENS["cpu"])
        prepared = self.prepare(texts, task, instruction)
        pooling = self.pooling(task)
        out = torch.empty((len(prepared), self.hidden_size), dtype=torch.float32)
        order = sorted(range(len(prepared)), key=lambda i: -_width(prepared[i]))
        for chunk in _length_batches(order, prepared, batch_size, max_batch_tokens):
            out[chunk] = self._forward_halving([prepared[i] for i in chunk], pooling)
            bar.update(len(chunk))
        if normalize:
            out = nn.functional.normalize(out, p=2, dim=1)
        return out

    def _forward_halving(self, items: list[Prepared], pooling: Pooling) -> torch.Tensor:
        """Forward a batch; on out-of-memory, warn and retry its halves (same vectors: batches
        do not change results), down to a single text, whose OOM is raised."""
        try:
            return self.forward(self.collate(items, pooling)).float().cpu()
        except torch.OutOfMemoryError:
            if len(items) == 1:
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            warnings.warn(f"Out of memory on a batch of {len(items)} texts; retrying it in halves", stacklevel=3)
            half = len(items) // 2
            return torch.cat([self._forward_halving(items[:half], pooling), self._forward_halving(items[half:], pooling)])


def _pack(rows: Sequence[Row], pooling: Pooling, groups: int, prefix: tuple[int, ...]) -> Batch:
    """All rows back to back in one sequence, positions restarting after the cached prefix."""
    lengths = [len(r.ids) for r in rows]
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    total = starts[-1]
    input_ids = torch.tensor([[t for r in rows for t in r.ids]], dtype=torch.long)
    position_ids = torch.tensor([[len(prefix) + i for n in lengths for i in range(n)]], dtype=torch.long)
    last = torch.tensor([start + r.pooled[-1] for r, start in zip(rows, starts)], dtype=torch.long)
    placeholder = None
    if rows[0].placeholder is not None:
        placeholder = torch.tensor([start + r.placeholder for r, start in zip(rows, starts)], dtype=torch.long)  # type: ignore[operator]
    cu_seqlens = torch.tensor(starts, dtype=torch.int32)
    return Batch(input_ids, None, _pool_index(rows, starts), last, placeholder, pooling, groups, prefix, position_ids, cu_seqlens)


def _pool_index(rows: Sequence[Row], offsets: Sequence[int]) -> torch.Tensor:
    """``[2, pooled tokens]``: each pooled token's row and its position (the row's offset plus
    its position in the row)."""
    row = [i for i, r in enumerate(rows) for _ in r.pooled]
    position = [off + p for r, off in zip(rows, offsets) for p in r.pooled]
    return torch.tensor([row, position], dtype=torch.long)


def _shared_prefix(rows: Sequence[Row]) -> tuple[int, ...]:
    """The longest constant start common to all rows that is neither pooled, nor the placeholder,
    nor the whole row (at least one token must go through the batch forward)."""
    first = rows[0].ids
    n = min(min(r.constant, r.pooled[0], len(r.ids) - 1, len(first) if r.placeholder is None else r.placeholder) for r in rows)
    for r in rows:
        while n and r.ids[:n] != first[:n]:
            n -= 1
    return tuple(first[:n])


def _width(item: Prepared) -> int:
    return max(len(r.ids) for r in item)


def _length_batches(order: list[int], prepared: list[Prepared], batch_size: int, max_tokens: int | None) -> list[list[int]]:
    """Consecutive runs of the longest-first order, capped by count and by padded tokens."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        rows = len(prepared[i])
        width = _width(prepared[current[0]]) if current else _width(prepared[i])
        if current and (len(current) >= batch_size or (max_tokens is not None and (len(current) + 1) * rows * width > max_tokens)):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def pool(hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean over the pooled span, or its last token, in fp32; averaged over a text's templates."""
    hidden = hidden.float()
    rows = batch.last_index.shape[0]
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
