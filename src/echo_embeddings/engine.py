"""The engine: a decoder, a strategy and its settings; tokenize each text once, lay it into its
templates, batch by the token budget, forward, pool.

Every surface (the sentence-transformers model, LangChain, LlamaIndex, the CLI) reaches the
decoder through :class:`Engine`: they share its layout, its batching rule
(:meth:`Engine.embed_prepared`) and its forward. Every setting is an attribute that takes
effect when it is set and is validated then; ``None`` for ``output_layer`` or ``tp_layers``
means the per-model default for the strategy, and reading them gives what actually runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from itertools import islice
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .batching import Batch, Prepared, Row, cut_prefix, longest_first, pack_rows, pad_rows, shared_prefix, token_budget_batches
from .forward import LayerPlan, checkpointing, decoder_layers, forward_hidden, resolve_output_layer
from .frozen_states import FrozenStates
from .layout import Layout, PieceTokenizer
from .model_defaults import preset_defaults
from .packing import Packing, fits_window, supports_packing, uses_packed_attention, varlen_kernel
from .pooling import pool
from .prefix_cache import PrefixCache, prefix_cache_support
from .presets import DEFAULT_INSTRUCTION, PRESETS, Preset, as_preset
from .template import Pooling, Template

DEFAULT_MAX_SEQ_LENGTH = 4096
"""Most tokens of a whole prompt unless set, capped at the model's context: echo reads documents of
about 2,000 tokens whole (LlamaIndex sends 1,024-token chunks by default). Long rows do not
inflate batches: the token budget runs them in smaller ones."""
DEFAULT_BATCH_SIZE = 256
DEFAULT_BATCH_TOKENS = {"cpu": 2048, "cuda": 32768}
"""Token budget of a batch (rows x width) on CPU / CUDA: measured best for SmolLM2 on 2 cores;
GPUs need large batches to fill. A single row longer than the budget still runs alone."""


def check_texts(texts: object, first_index: int = 0) -> list[str]:
    """Fail before any model work if an item is not a string, naming its index and type."""
    if isinstance(texts, str):
        raise TypeError("Expected a list of strings, got a single str; wrap it in a list")
    if texts is None:
        raise TypeError("Expected a list of strings, got None")
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


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class Engine:
    """A decoder plus a strategy: the one pooling core behind every surface.

    Args:
        model: the bare decoder (``AutoModel``, no LM head). It is never modified: packed batches
            run only if its owner loaded it with ``attn_implementation="echo_packed"`` (as
            :func:`echo_embeddings.load` does).
        tokenizer: its tokenizer.
        strategy: a preset name (``"echo"``, ``"prompteol+tp"``, ...), a :class:`Preset`, a
            :class:`Template`, or a template string such as ``"Say: {x*}"``.
        pooling: ``"mean"`` or ``"last"`` for a template string; a preset brings its own.
        instruction: fills the ``{instruction}`` field of query templates.
        max_seq_length: most tokens of a whole prompt; longer texts are truncated before
            repetition, with a warning (``encode_chunks`` reads them whole in windows instead).
            ``None``: 4,096, or the model's context if shorter.
        output_layer: the hidden state to pool (transformers' ``hidden_states`` index; ``-1`` the
            final output); ``None`` for the per-model default of the strategy.
        final_norm: apply the final norm to an intermediate output layer.
        tp_layers: ``(start, stop)`` layers of the token-prepending overwrite for a ``+tp``
            strategy; ``None`` for the per-model default. Equal values run the base prompt.
        placeholder_token: the token that stands for ``{tp}`` (an existing one; default UNK/PAD/EOS).
        padding_side: ``"right"`` or ``"left"`` for padded batches.
        prefix_cache: compute the template's constant prefix once and reuse its keys and values.
        packing: pack batches without padding: ``None`` wherever the model and a kernel allow,
            ``True`` always (or an error), ``False`` never.
        max_batch_tokens: the token budget of a batch; ``None`` for the device's default.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        strategy: str | Preset | Template = "echo",
        *,
        pooling: Pooling | None = None,
        instruction: str = DEFAULT_INSTRUCTION,
        max_seq_length: int | None = None,
        output_layer: int | None = None,
        final_norm: bool = False,
        tp_layers: Sequence[int] | None = None,
        placeholder_token: str | int | None = None,
        padding_side: str = "right",
        prefix_cache: bool = True,
        packing: bool | None = None,
        max_batch_tokens: int | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self._prefixes = PrefixCache()
        self.frozen_states: FrozenStates | None = None
        """Training only: kept states of the frozen lower layers (see :mod:`echo_embeddings.frozen_states`)."""
        self._layouts: dict[tuple[Template, str, bool], Layout] = {}
        self._tp_layers: tuple[int, int] | None = None
        self._output_layer: int | None = None
        self._preset = as_preset(strategy, pooling)
        self.tp_layers = tp_layers  # type: ignore[assignment]
        self.output_layer = output_layer  # type: ignore[assignment]
        self._warn_if_tp_is_off()
        self.final_norm = bool(final_norm)
        self.placeholder_token = placeholder_token
        self.instruction = instruction
        self.max_seq_length = max_seq_length
        self.padding_side = padding_side
        self.prefix_cache = prefix_cache
        self.packing = packing
        self.max_batch_tokens = max_batch_tokens

    # -- settings ---------------------------------------------------------------------------
    @property
    def preset(self) -> Preset:
        return self._preset

    @property
    def strategy(self) -> str:
        """The preset name, or the template string of a custom template (what a save writes)."""
        return self._preset.name

    @strategy.setter
    def strategy(self, value: str | Preset | Template) -> None:
        preset = as_preset(value)
        if isinstance(value, Preset) and PRESETS.get(value.name) is not value:
            raise ValueError(f"Register preset {value.name!r} (register_preset) so that a saved model can find it again")
        if self._tp_layers is not None and not preset.token_prepending:
            raise ValueError(f"tp_layers are set, but strategy {preset.name!r} has no token prepending; set tp_layers=None first")
        self._preset = preset
        self._warn_if_tp_is_off()

    @property
    def pooling(self) -> Pooling:
        """How the strategy pools: ``"mean"`` or ``"last"``; settable for a template string only."""
        return self._preset.sentence[0].pooling

    @pooling.setter
    def pooling(self, value: Pooling) -> None:
        if value == self.pooling:
            return
        if self._preset.name in PRESETS:
            raise ValueError(f"Strategy {self._preset.name!r} pools {self.pooling!r}; pooling can only be changed for a template string")
        self._preset = as_preset(self._preset.name, value)

    @property
    def output_layer(self) -> int:
        """The hidden state that is pooled (the per-model default unless set)."""
        return self._output_layer if self._output_layer is not None else self._defaults()[1]

    @output_layer.setter
    def output_layer(self, value: int | None) -> None:
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"output_layer must be an int or None, got {value!r}")
            resolve_output_layer(self.model, value)  # raises for a layer the model does not have
        self._output_layer = value

    @property
    def tp_layers(self) -> tuple[int, int] | None:
        """``(start, stop)`` of the token-prepending overwrite, or None for a strategy without TP."""
        if not self._preset.token_prepending:
            return None
        return self._tp_layers if self._tp_layers is not None else self._defaults()[0]

    @tp_layers.setter
    def tp_layers(self, value: Sequence[int] | None) -> None:
        if value is None:
            self._tp_layers = None
            return
        if not self._preset.token_prepending:
            raise ValueError(f"tp_layers are set, but strategy {self._preset.name!r} has no token prepending; use a '+tp' strategy")
        if isinstance(value, (str, bytes)) or len(value) != 2 or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
            raise TypeError(f"tp_layers must be two ints (start, stop), got {value!r}")
        start, stop = int(value[0]), int(value[1])
        n = len(decoder_layers(self.model))
        if not 0 <= start <= stop <= n:
            raise ValueError(f"tp_layers ({start}, {stop}) must satisfy 0 <= start <= stop <= {n} (the model's layers)")
        self._tp_layers = (start, stop)

    @property
    def placeholder_token(self) -> str | int | None:
        return self._placeholder_token

    @placeholder_token.setter
    def placeholder_token(self, value: str | int | None) -> None:
        self.pieces = PieceTokenizer(self.tokenizer, value)  # validates it
        self._placeholder_token = value
        self._layouts.clear()

    @property
    def instruction(self) -> str:
        return self._instruction

    @instruction.setter
    def instruction(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"instruction must be a str, got {type(value).__name__}")
        self._instruction = value

    @property
    def max_seq_length(self) -> int:
        """Most tokens of a whole prompt (the default unless set)."""
        if self._max_seq_length is not None:
            return self._max_seq_length
        return min(DEFAULT_MAX_SEQ_LENGTH, self.context_length or DEFAULT_MAX_SEQ_LENGTH)

    @max_seq_length.setter
    def max_seq_length(self, value: int | None) -> None:
        self._max_seq_length = None if value is None else _positive_int("max_seq_length", value)

    @property
    def context_length(self) -> int | None:
        """The most positions the model was trained for (its config's ``max_position_embeddings``)."""
        value = getattr(self.model.config, "max_position_embeddings", None)
        return value if isinstance(value, int) and value > 0 else None

    @property
    def max_batch_tokens(self) -> int | None:
        """The token budget of a batch; None for the device's default."""
        return self._max_batch_tokens

    @max_batch_tokens.setter
    def max_batch_tokens(self, value: int | None) -> None:
        self._max_batch_tokens = None if value is None else _positive_int("max_batch_tokens", value)

    @property
    def padding_side(self) -> str:
        return self._padding_side

    @padding_side.setter
    def padding_side(self, value: str) -> None:
        if value not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {value!r}")
        self._padding_side = value

    @property
    def packing(self) -> bool | None:
        return self._packing

    @packing.setter
    def packing(self, value: bool | None) -> None:
        if value not in (None, True, False):
            raise TypeError(f"packing must be None, True or False, got {value!r}")
        self._packing = value
        if value:
            why = self._why_no_packing()
            if why:
                raise ValueError(f"packing=True, but {why}")

    @property
    def plan(self) -> LayerPlan:
        """The layers as they run: output layer, final norm and token-prepending range."""
        start, stop = self.tp_layers or (0, 0)
        return LayerPlan(self.output_layer, self.final_norm, start, stop)

    def _defaults(self) -> tuple[tuple[int, int], int]:
        if not self._preset.token_prepending and self._preset.name not in PRESETS:
            return (0, 0), -1  # a template string: no tuned setting applies
        found = preset_defaults(self.model, self._preset.name if self._preset.name in PRESETS else "*+tp")
        return (found.tp_start, found.tp_stop), found.output_layer

    def _warn_if_tp_is_off(self) -> None:
        if self._preset.token_prepending and self._tp_layers is None and self._defaults()[0][0] == self._defaults()[0][1]:
            warnings.warn(
                f"Token prepending is off by default for this model: it did not help on the development sets. "
                f"'{self._preset.name}' runs as its base prompt; pass tp_layers=(start, stop) to force it.",
                stacklevel=3,
            )

    # -- what runs --------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def _why_no_prefix_cache(self) -> str | None:
        return "turned off (prefix_cache=False)" if not self.prefix_cache else prefix_cache_support(self.model)

    def _why_no_packing(self) -> str | None:
        if self._packing is False:
            return "turned off (packing=False)"
        if not supports_packing(self.model):
            return f"{type(self.model).__name__} does not support packed batches (soft-capped or custom attention)"
        if not uses_packed_attention(self.model):
            return (
                f"the model's attention implementation is {self.model.config._attn_implementation!r}; load it with "
                "attn_implementation='echo_packed' (echo_embeddings.load does) to allow packed batches"
            )
        param = next(self.model.parameters())
        if varlen_kernel(param.device, param.dtype) is None:
            return f"there is no packed-attention kernel for {param.device.type} {param.dtype} (CUDA needs bf16 or fp16)"
        return None

    @property
    def fast_paths(self) -> dict[str, str]:
        """Which optimizations run: ``{"prefix_cache": "on" | "off: why", "packing": kernel | "off: why"}``."""
        no_cache, no_packing = self._why_no_prefix_cache(), self._why_no_packing()
        param = next(self.model.parameters())
        return {
            "prefix_cache": f"off: {no_cache}" if no_cache else "on",
            "packing": f"off: {no_packing}" if no_packing else str(varlen_kernel(param.device, param.dtype)),
        }

    def _kernel(self) -> str | None:
        """The packed-attention kernel to use, or None for padded batches."""
        if self._why_no_packing():
            return None
        param = next(self.model.parameters())
        return varlen_kernel(param.device, param.dtype)

    def __repr__(self) -> str:
        paths = ", ".join(f"{k}={v!r}" for k, v in self.fast_paths.items())
        return (
            f"Engine(model={type(self.model).__name__}, strategy={self.strategy!r}, output_layer={self.output_layer}, "
            f"tp_layers={self.tp_layers}, {paths})"
        )

    # -- layout -----------------------------------------------------------------------------
    def layouts(self, task: str | None = None, instruction: str | None = None) -> list[Layout]:
        instruction = self.instruction if instruction is None else instruction
        # Token prepending off (or start == stop): the placeholder is left out, so the
        # sequence is exactly the base prompt's.
        placeholder = self.plan.token_prepending
        out = []
        for template in self._preset.templates(task):
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

    def collate(self, items: Sequence[Prepared], pooling: Pooling | None = None) -> Batch:
        """Rows into tensors: packed where a kernel allows, else padded. With the prefix cache
        on, the shared constant prefix is cut off (its keys and values come from the cache)."""
        pooling = pooling or self.pooling
        groups = len(items[0])
        rows = [item[g] for g in range(groups) for item in items]
        prefix = shared_prefix(rows) if not self._why_no_prefix_cache() else ()
        if prefix:
            rows = cut_prefix(rows, prefix)
        longest = max(len(r.ids) for r in rows)
        if self._kernel() and fits_window(self.model, longest + len(prefix)):
            return pack_rows(rows, pooling, groups, prefix)
        pad = self.tokenizer.pad_token_id
        pad = self.tokenizer.eos_token_id if pad is None else pad
        return pad_rows(rows, pooling, groups, prefix, 0 if pad is None else int(pad), self.padding_side)

    def tokenize(self, texts: Sequence[str], task: str | None = None, instruction: str | None = None) -> Batch:
        return self.collate(self.prepare(texts, task, instruction), self._preset.templates(task)[0].pooling)

    # -- forward ----------------------------------------------------------------------------
    def forward(self, batch: Batch) -> torch.Tensor:
        """Pooled embeddings ``[texts, dim]`` in fp32; differentiable (no inference mode here)."""
        plan = self.plan
        depth = resolve_output_layer(self.model, plan.output_layer)[0]
        batch = batch.to(self.device)
        frozen = self.frozen_states.call(batch, depth) if self.frozen_states is not None and torch.is_grad_enabled() else None
        if batch.prefix and torch.is_grad_enabled() and checkpointing(self.model):
            raise ValueError(
                "gradient checkpointing drops the key/value cache while training, so the cached template prefix cannot "
                "reach this forward: set model[0].engine.prefix_cache = False for the run (echo_embeddings.training.train does)"
            )
        if batch.packed:
            kernel = self._kernel()
            if kernel is None:
                raise ValueError("This batch is packed but packing is off or unsupported here; collate it again")
            prefix = self._prefixes.key_values(self.model, batch.prefix, depth) if batch.prefix else None
            packing = Packing(batch.cu_seqlens.diff().tolist(), batch.cu_seqlens, kernel, prefix)  # type: ignore[union-attr]
            # An all-ones mask: transformers builds no [T, T] mask; rows are kept apart by the kernel.
            ones = torch.ones_like(batch.input_ids)
            hidden = forward_hidden(
                self.model, batch.input_ids, ones, plan, batch.last_index, batch.placeholder_index,
                position_ids=batch.position_ids, frozen=frozen, echo_packing=packing,
            )
            if packing.calls != depth - (frozen.skipped if frozen is not None else 0):
                raise RuntimeError(
                    f"{type(self.model).__name__} ran {packing.calls} of {depth} attention layers without the packed layout "
                    "(its forward does not pass attention kwargs through); set packing=False for it"
                )
            return pool(hidden, batch)
        past = self._prefixes.past(self.model, batch.prefix, depth, batch.input_ids.shape[0]) if batch.prefix else None
        hidden = forward_hidden(
            self.model, batch.input_ids, batch.attention_mask, plan, batch.last_index, batch.placeholder_index, past, frozen=frozen
        )
        return pool(hidden, batch)

    # -- encoding ---------------------------------------------------------------------------
    def embed_prepared(
        self,
        prepared: Sequence[Prepared],
        forward: Callable[[Batch], torch.Tensor],
        *,
        pooling: Pooling | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: tqdm | None = None,
    ) -> torch.Tensor:
        """The one batching loop: sort by token count, fill batches to the token budget, run
        ``forward`` on each collated batch, and return the rows in input order. Every surface
        uses it (the sentence-transformers model passes its whole module list as ``forward``)."""
        _positive_int("batch_size", batch_size)
        budget = self.max_batch_tokens or DEFAULT_BATCH_TOKENS.get(self.device.type, DEFAULT_BATCH_TOKENS["cpu"])
        pieces: list[tuple[list[int], torch.Tensor]] = []
        for chunk in token_budget_batches(longest_first(prepared), prepared, batch_size, budget):
            pieces.append((chunk, self._forward_halving([prepared[i] for i in chunk], pooling, forward)))
            if progress is not None:
                progress.update(len(chunk))
        if not pieces:
            return torch.empty((0, self.hidden_size))
        first = pieces[0][1]
        out = first.new_empty((len(prepared), *first.shape[1:]))
        for chunk, vectors in pieces:
            out[torch.tensor(chunk, device=out.device)] = vectors
        return out

    def _forward_halving(self, items: list[Prepared], pooling: Pooling | None, forward: Callable[[Batch], torch.Tensor]) -> torch.Tensor:
        """Forward a batch; on out-of-memory, warn and retry its halves (same vectors: batches
        do not change results), down to a single text, whose OOM is raised."""
        try:
            return forward(self.collate(items, pooling))
        except torch.OutOfMemoryError:
            if len(items) == 1:
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            warnings.warn(f"Out of memory on a batch of {len(items)} texts; retrying it in halves", stacklevel=3)
            half = len(items) // 2
            return torch.cat([self._forward_halving(items[:half], pooling, forward), self._forward_halving(items[half:], pooling, forward)])

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str],
        task: str | None = None,
        *,
        instruction: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        normalize: bool = False,
        show_progress_bar: bool = False,
    ) -> torch.Tensor:
        """Embed ``texts`` with the bare decoder, in input order, as fp32 on the CPU. The
        sentence-transformers model's ``encode`` runs the same loop through its whole module list."""
        texts = check_texts(texts)
        prepared = self.prepare(texts, task, instruction)
        with tqdm(total=len(texts), desc="Embedding", disable=not show_progress_bar, unit="text") as bar:
            out = self.embed_prepared(
                prepared, lambda batch: self.forward(batch).float().cpu(), pooling=self._preset.templates(task)[0].pooling,
                batch_size=batch_size, progress=bar,
            )
        return nn.functional.normalize(out, p=2, dim=1) if normalize else out
