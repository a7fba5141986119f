"""The encoder engine: tokenize each text once, lay it into its template, batch by length, forward, pool.

Every surface (sentence-transformers, LangChain, LlamaIndex, the CLI) goes through
:class:`Embedder`; none of them knows about templates, spans or layers.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from .hooks import LayerPlan, forward_hidden
from .templates import DEFAULT_INSTRUCTION, Layout, PieceTokenizer, Pooling, Preset, Template, get_preset

DEFAULT_MAX_SEQ_LENGTH = 512


def check_texts(texts: object) -> list[str]:
    """Fail before any model work if an item is not a string, naming its index and type."""
    if isinstance(texts, str):
        raise TypeError("Expected a list of strings, got a single str; wrap it in a list")
    texts = list(texts)  # type: ignore[call-overload]
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"Input {i} is {type(text).__name__} ({text!r:.60}); every input must be a str")
    return texts


def as_preset(strategy: str | Preset | Template, pooling: Pooling = "mean") -> Preset:
    """A registered name, a Preset, a Template, or a template string such as ``"Say: {x*}"``."""
    if isinstance(strategy, Preset):
        return strategy
    if isinstance(strategy, Template):
        return Preset(strategy.spec or "custom", strategy)
    if "{" in strategy:
        return Preset(strategy, Template.parse(strategy, pooling))
    return get_preset(strategy)


@dataclass
class Batch:
    """Right-padded tensors for one forward, plus where to pool."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pool_mask: torch.Tensor
    last_index: torch.Tensor
    placeholder_index: torch.Tensor | None
    pooling: Pooling

    def to(self, device: torch.device) -> Batch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(
            move(self.input_ids), move(self.attention_mask), move(self.pool_mask), move(self.last_index), move(self.placeholder_index), self.pooling
        )

    def as_features(self) -> dict[str, torch.Tensor | str]:
        features: dict[str, torch.Tensor | str] = {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "pool_mask": self.pool_mask,
            "last_index": self.last_index,
            "pooling": self.pooling,
        }
        if self.placeholder_index is not None:
            features["placeholder_index"] = self.placeholder_index
        return features

    @classmethod
    def from_features(cls, features: dict) -> Batch:
        return cls(
            features["input_ids"],
            features["attention_mask"],
            features["pool_mask"],
            features["last_index"],
            features.get("placeholder_index"),
            features["pooling"],
        )


@dataclass(frozen=True)
class Prepared:
    """One text laid into its template: ids, pooled positions, placeholder position."""

    ids: list[int]
    pooled: list[int]
    placeholder: int | None = None


@dataclass
class Embedder:
    """A decoder plus a strategy: the one pooling core behind every surface."""

    model: nn.Module
    tokenizer: object
    preset: Preset
    plan: LayerPlan = field(default_factory=LayerPlan)
    instruction: str = DEFAULT_INSTRUCTION
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH
    placeholder_token: str | int | None = None

    def __post_init__(self) -> None:
        self.pieces = PieceTokenizer(self.tokenizer, self.placeholder_token)  # type: ignore[arg-type]
        self._layouts: dict[tuple[Template, str], Layout] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def layout(self, task: str | None = None, instruction: str | None = None) -> Layout:
        template = self.preset.template(task)
        instruction = self.instruction if instruction is None else instruction
        key = (template, instruction)
        if key not in self._layouts:
            layout = self.pieces.layout(template, instruction)
            if self.plan.token_prepending and not layout.template.has_placeholder:
                raise ValueError(f"Token prepending needs a {{tp}} placeholder in the template {template.spec!r}")
            self._layouts[key] = layout
        return self._layouts[key]

    def prepare(self, texts: Sequence[str], task: str | None = None, instruction: str | None = None) -> list[Prepared]:
        """Tokenize each text once, truncate it so every copy fits, and lay it into the template."""
        texts = check_texts(texts)
        layout = self.layout(task, instruction)
        budget = (self.max_seq_length - layout.fixed_length) // layout.template.copies
        if budget < 1:
            raise ValueError(
                f"The template alone takes {layout.fixed_length} tokens, leaving no room for the text within max_seq_length={self.max_seq_length}"
            )
        encoded = self.pieces.encode_inputs(texts, layout.lead)
        truncated = sum(len(ids) > budget for ids in encoded)
        if truncated:
            warnings.warn(
                f"{truncated} of {len(texts)} inputs were longer than {budget} tokens and were truncated before "
                f"repetition so that the prompt fits max_seq_length={self.max_seq_length}",
                stacklevel=3,
            )
        return [Prepared(*layout.build(ids[:budget])) for ids in encoded]

    def collate(self, items: Sequence[Prepared], pooling: Pooling) -> Batch:
        longest = max(len(p.ids) for p in items)
        pad = self.tokenizer.pad_token_id  # type: ignore[attr-defined]
        input_ids = torch.full((len(items), longest), pad if pad is not None else 0, dtype=torch.long)
        attention = torch.zeros((len(items), longest), dtype=torch.long)
        pool_mask = torch.zeros((len(items), longest), dtype=torch.float32)
        last = torch.empty(len(items), dtype=torch.long)
        for row, p in enumerate(items):
            input_ids[row, : len(p.ids)] = torch.tensor(p.ids)
            attention[row, : len(p.ids)] = 1
            pool_mask[row, p.pooled] = 1.0
            last[row] = p.pooled[-1]
        placeholder = None
        if items[0].placeholder is not None:
            placeholder = torch.tensor([p.placeholder for p in items], dtype=torch.long)
        return Batch(input_ids, attention, pool_mask, last, placeholder, pooling)

    def tokenize(self, texts: Sequence[str], task: str | None = None, instruction: str | None = None) -> Batch:
        return self.collate(self.prepare(texts, task, instruction), self.preset.template(task).pooling)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Pooled embeddings ``[batch, dim]`` in fp32; differentiable (no inference mode here)."""
        batch = batch.to(self.device)
        hidden = forward_hidden(self.model, batch.input_ids, batch.attention_mask, self.plan, batch.last_index, batch.placeholder_index)
        return pool(hidden, batch)

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str],
        task: str | None = None,
        *,
        instruction: str | None = None,
        batch_size: int = 32,
        max_batch_tokens: int | None = None,
        normalize: bool = False,
        show_progress_bar: bool = False,
    ) -> torch.Tensor:
        """Embed ``texts`` in input order; batches are length-sorted by token count."""
        prepared = self.prepare(texts, task, instruction)
        pooling = self.preset.template(task).pooling
        out = torch.empty((len(prepared), self.hidden_size), dtype=torch.float32)
        order = sorted(range(len(prepared)), key=lambda i: -len(prepared[i].ids))
        with tqdm(total=len(prepared), desc="Embedding", disable=not show_progress_bar, unit="text") as bar:
            for chunk in _length_batches(order, prepared, batch_size, max_batch_tokens):
                vectors = self.forward(self.collate([prepared[i] for i in chunk], pooling))
                out[chunk] = vectors.float().cpu()
                bar.update(len(chunk))
        if normalize:
            out = nn.functional.normalize(out, p=2, dim=1)
        return out

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)  # type: ignore[union-attr]


def _length_batches(order: list[int], prepared: list[Prepared], batch_size: int, max_tokens: int | None) -> list[list[int]]:
    """Consecutive runs of the longest-first order, capped by count and by padded tokens."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = len(prepared[current[0]].ids) if current else len(prepared[i].ids)
        if current and (len(current) >= batch_size or (max_tokens is not None and (len(current) + 1) * width > max_tokens)):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def pool(hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean over the pooled span, or its last token, in fp32."""
    hidden = hidden.float()
    if batch.pooling == "last":
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), batch.last_index]
    mask = batch.pool_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1)
