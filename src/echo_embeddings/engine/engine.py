"""The engine: a decoder, a strategy and its settings; tokenize each text once, lay it into its
templates, batch by the token budget, forward, pool.

Every surface (the sentence-transformers model, LangChain, LlamaIndex, the CLI, the server) reaches
the decoder through :class:`Engine`: they share its layout, its batch schedule
(:func:`~echo_embeddings.engine.schedule.run_batches`) and its forward. Its settings are one
:class:`~echo_embeddings.engine.settings.EmbedderSettings`; each is also an attribute that takes
effect when it is set and is validated then. ``None`` for ``output_layer`` or ``tp_layers`` means
the per-model default for the strategy, and reading them gives what actually runs.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from . import fast_paths
from .batching import Batch, Prepared, Row, cut_prefix, pack_rows, pad_rows, shared_prefix
from .defaults import preset_defaults
from .forward import LayerEntry, LayerPlan, forward_hidden
from .inputs import check_texts
from .layout import Layout, PieceTokenizer
from .model_parts import checkpointing, decoder_layers, input_device, resolve_output_layer
from .packing import Packing, fits_window, register_packed_attention, uses_packed_attention
from .pooling import pool
from .prefix_cache import PrefixCache
from .presets import PRESETS, Preset, as_preset
from .schedule import run_batches
from .settings import DEFAULT_BATCH_SIZE, DEFAULT_BATCH_TOKENS, DEFAULT_MAX_SEQ_LENGTH, EmbedderSettings, positive_int, with_setting_attributes
from .template import Pooling, Template

EntryPoint = Callable[[Batch, int], "LayerEntry | None"]
"""``entry(batch, depth)``: where a forward with gradients on enters the decoder stack (or None)."""


@with_setting_attributes()
class Engine:
    """A decoder plus a strategy: the one pooling core behind every surface.

    Args:
        model: the bare decoder (``AutoModel``, no LM head). It is never modified: packed batches
            run only if its owner loaded it with ``attn_implementation="echo_packed"`` (as
            :func:`echo_embeddings.load` does).
        tokenizer: its tokenizer.
        strategy: a preset name (``"echo"``, ``"prompteol+tp"``, ...), a registered :class:`Preset`,
            a :class:`Template`, or a template string such as ``"Say: {x*}"``.
        **settings: the other :class:`~echo_embeddings.engine.settings.EmbedderSettings` fields
            (``output_layer``, ``tp_layers``, ``max_seq_length``, ``prefix_cache``, ``packing``, ...).
            Each is an attribute of the engine too.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, strategy: str | Preset | Template = "echo", **settings: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self._prefixes = PrefixCache()
        self._layouts: dict[tuple[Template, str, bool], Layout] = {}
        self._entry: EntryPoint | None = None
        self.pieces: PieceTokenizer | None = None
        if isinstance(strategy, Preset) and PRESETS.get(strategy.name) is not strategy:
            # An unregistered preset runs in this engine, but has no name a save could write.
            self._unregistered: Preset | None = strategy
            strategy = "echo"
        else:
            self._unregistered = None
        self._settings = EmbedderSettings()
        self._apply(EmbedderSettings(strategy=strategy, **settings), new_strategy=False, unregistered=self._unregistered)  # type: ignore[arg-type]
        self._warn_if_tp_is_off()

    # -- settings ---------------------------------------------------------------------------
    @property
    def settings(self) -> EmbedderSettings:
        """The settings as given (``None`` where a default applies); see :meth:`resolved`."""
        return self._settings

    def configure(self, **changes: Any) -> None:
        """Change settings: checked together against the model, applied only if all pass."""
        if "strategy" in changes and "pooling" not in changes:
            changes["pooling"] = None  # a new strategy brings its own pooling
        if "pooling" in changes and "strategy" not in changes and changes["pooling"] is not None:
            if changes["pooling"] == self.pooling:
                return
            if self.preset.name in PRESETS:
                raise ValueError(f"Strategy {self.preset.name!r} pools {self.pooling!r}; pooling can only be changed for a template string")
        before = self._settings
        self._apply(
            dataclasses.replace(before, **changes), new_strategy="strategy" in changes and before.tp_layers is not None,
            unregistered=None if "strategy" in changes else self._unregistered,
        )
        if "strategy" in changes:
            self._warn_if_tp_is_off()

    def _apply(self, new: EmbedderSettings, new_strategy: bool, unregistered: Preset | None) -> None:
        """Check ``new`` against the model and make it the settings; nothing changes if a check fails."""
        preset = unregistered or as_preset(new.strategy, new.pooling)
        if new.tp_layers is not None and not preset.token_prepending:
            raise ValueError(
                f"tp_layers are set, but strategy {preset.name!r} has no token prepending; "
                + ("set tp_layers=None first" if new_strategy else "use a '+tp' strategy")
            )
        if new.output_layer is not None:
            resolve_output_layer(self.model, new.output_layer)  # raises for a layer the model does not have
        if new.tp_layers is not None:
            start, stop = new.tp_layers
            n = len(decoder_layers(self.model))
            if not 0 <= start <= stop <= n:
                raise ValueError(f"tp_layers ({start}, {stop}) must satisfy 0 <= start <= stop <= {n} (the model's layers)")
        pieces = self.pieces
        if pieces is None or new.placeholder_token != self._settings.placeholder_token:
            pieces = PieceTokenizer(self.tokenizer, new.placeholder_token)  # validates the placeholder
        if new.packing:
            why = fast_paths.why_no_packing(self.model, new.packing)
            if why:
                raise ValueError(f"packing=True, but {why}")
        self._settings, self._preset, self.pieces, self._unregistered = new, preset, pieces, unregistered
        self._layouts.clear()

    def resolved(self, name: str) -> Any:
        """Setting ``name`` as it runs: defaults resolved, the strategy by its name."""
        if name == "strategy":
            return self._preset.name
        if name == "pooling":
            return self._preset.sentence[0].pooling
        if name == "output_layer":
            return self._settings.output_layer if self._settings.output_layer is not None else self._defaults()[1]
        if name == "tp_layers":
            if not self._preset.token_prepending:
                return None
            return self._settings.tp_layers if self._settings.tp_layers is not None else self._defaults()[0]
        if name == "max_seq_length":
            if self._settings.max_seq_length is not None:
                return self._settings.max_seq_length
            return min(DEFAULT_MAX_SEQ_LENGTH, self.context_length or DEFAULT_MAX_SEQ_LENGTH)
        return getattr(self._settings, name)

    @property
    def batch_token_budget(self) -> int:
        """Padded tokens a batch holds at most: ``max_batch_tokens``, or the device's default when it
        is None (a saved model keeps None, so it gets the default of the device it runs on)."""
        return self._settings.max_batch_tokens or DEFAULT_BATCH_TOKENS.get(self.device.type, DEFAULT_BATCH_TOKENS["cpu"])

    def config(self) -> dict[str, Any]:
        """Every setting as it runs, JSON-ready: what a save writes."""
        config = {f.name: self.resolved(f.name) for f in dataclasses.fields(EmbedderSettings)}
        for key in ("tp_layers", "matryoshka_dims"):
            if config[key] is not None:
                config[key] = list(config[key])
        return config

    @property
    def preset(self) -> Preset:
        return self._preset

    @property
    def context_length(self) -> int | None:
        """The most positions the model was trained for (its config's ``max_position_embeddings``)."""
        value = getattr(self.model.config, "max_position_embeddings", None)
        return value if isinstance(value, int) and value > 0 else None

    @property
    def plan(self) -> LayerPlan:
        """The layers as they run: output layer, final norm and token-prepending range."""
        start, stop = self.resolved("tp_layers") or (0, 0)
        return LayerPlan(self.resolved("output_layer"), self._settings.final_norm, start, stop)

    def _defaults(self) -> tuple[tuple[int, int], int]:
        if not self._preset.token_prepending and self._preset.name not in PRESETS:
            return (0, 0), -1  # a template string: no tuned setting applies
        found = preset_defaults(self.model, self._preset.name if self._preset.name in PRESETS else "*+tp")
        return (found.tp_start, found.tp_stop), found.output_layer

    def _warn_if_tp_is_off(self) -> None:
        if self._preset.token_prepending and self._settings.tp_layers is None and self._defaults()[0][0] == self._defaults()[0][1]:
            warnings.warn(
                f"Token prepending is off by default for this model: it did not help on the development sets. "
                f"'{self._preset.name}' runs as its base prompt; pass tp_layers=(start, stop) to force it.",
                stacklevel=4,
            )

    # -- what runs --------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where batches go: the device of the decoder's input embeddings (see :func:`input_device`)."""
        return input_device(self.model)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def fast_paths(self) -> dict[str, str]:
        """Which optimizations run: ``{"prefix_cache": "on" | "off: why", "packing": kernel | "off: why"}``."""
        return fast_paths.report(self.model, self._settings.prefix_cache, self._settings.packing)

    @property
    def packing_kernel(self) -> str | None:
        """The packed-attention kernel batches run with, or None for padded batches."""
        return fast_paths.packing_kernel(self.model, self._settings.packing)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # In another process (a multi-process pool, a Ray actor) the packed attention backend
        # must be registered again before the decoder, loaded with it, runs.
        self.__dict__.update(state)
        if uses_packed_attention(self.model):
            register_packed_attention()

    def __repr__(self) -> str:
        paths = ", ".join(f"{k}={v!r}" for k, v in self.fast_paths.items())
        return (
            f"Engine(model={type(self.model).__name__}, strategy={self.resolved('strategy')!r}, output_layer={self.resolved('output_layer')}, "
            f"tp_layers={self.resolved('tp_layers')}, {paths})"
        )

    # -- layout -----------------------------------------------------------------------------
    def layouts(self, task: str | None = None, instruction: str | None = None) -> list[Layout]:
        instruction = self._settings.instruction if instruction is None else instruction
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
        max_seq_length = self.resolved("max_seq_length")
        budget = min((max_seq_length - lay.fixed_length) // lay.template.copies for lay in layouts)
        if budget < 1:
            longest = max(lay.fixed_length for lay in layouts)
            raise ValueError(f"The template alone takes {longest} tokens, leaving no room for the text within max_seq_length={max_seq_length}")
        encoded = {lead: self.pieces.encode_inputs(texts, lead) for lead in {lay.lead for lay in layouts}}
        truncated = sum(len(ids) > budget for ids in next(iter(encoded.values())))
        if truncated:
            warnings.warn(
                f"{truncated} of {len(texts)} inputs were longer than {budget} tokens and were truncated before "
                f"repetition so that the prompt fits max_seq_length={max_seq_length}",
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
        pooling = pooling or self._preset.sentence[0].pooling
        groups = len(items[0])
        rows = [item[g] for g in range(groups) for item in items]
        no_cache = fast_paths.why_no_prefix_cache(self.model, self._settings.prefix_cache)
        prefix = shared_prefix(rows) if not no_cache else ()
        if prefix:
            rows = cut_prefix(rows, prefix)
        longest = max(len(r.ids) for r in rows)
        if fast_paths.packing_kernel(self.model, self._settings.packing) and fits_window(self.model, longest + len(prefix)):
            return pack_rows(rows, pooling, groups, prefix)
        pad = self.tokenizer.pad_token_id
        pad = self.tokenizer.eos_token_id if pad is None else pad
        return pad_rows(rows, pooling, groups, prefix, 0 if pad is None else int(pad), self._settings.padding_side)

    def tokenize(self, texts: Sequence[str], task: str | None = None, instruction: str | None = None) -> Batch:
        return self.collate(self.prepare(texts, task, instruction), self._preset.templates(task)[0].pooling)

    # -- forward ----------------------------------------------------------------------------
    @property
    def entry(self) -> EntryPoint | None:
        """The entry point set by :meth:`entering_with`, or None (always None outside it)."""
        return self._entry

    @contextmanager
    def entering_with(self, entry: EntryPoint) -> Iterator[None]:
        """For the block, every forward with gradients on asks ``entry(batch, depth)`` where to enter
        the decoder stack (:class:`~echo_embeddings.engine.forward.LayerEntry`); inference is unchanged."""
        if self._entry is not None:
            raise RuntimeError("an entry point is already set on this engine")
        self._entry = entry
        try:
            yield
        finally:
            self._entry = None

    def forward(self, batch: Batch) -> torch.Tensor:
        """Pooled embeddings ``[texts, dim]`` in fp32; differentiable (no inference mode here)."""
        plan = self.plan
        depth = resolve_output_layer(self.model, plan.output_layer)[0]
        batch = batch.to(self.device)
        entry = self._entry(batch, depth) if self._entry is not None and torch.is_grad_enabled() else None
        if batch.prefix and torch.is_grad_enabled() and checkpointing(self.model):
            raise ValueError(
                "gradient checkpointing drops the key/value cache while training, so the cached template prefix cannot "
                "reach this forward: set model[0].engine.prefix_cache = False for the run (echo_embeddings.training.train does)"
            )
        if batch.packed:
            kernel = fast_paths.packing_kernel(self.model, self._settings.packing)
            if kernel is None:
                raise ValueError("This batch is packed but packing is off or unsupported here; collate it again")
            prefix = self._prefixes.key_values(self.model, batch.prefix, depth) if batch.prefix else None
            packing = Packing(batch.cu_seqlens.diff().tolist(), batch.cu_seqlens, kernel, prefix)  # type: ignore[union-attr]
            # An all-ones mask: transformers builds no [T, T] mask; rows are kept apart by the kernel.
            ones = torch.ones_like(batch.input_ids)
            hidden = forward_hidden(
                self.model, batch.input_ids, ones, plan, batch.last_index, batch.placeholder_index,
                position_ids=batch.position_ids, entry=entry, echo_packing=packing,
            )
            if packing.calls != depth - (entry.skipped if entry is not None else 0):
                raise RuntimeError(
                    f"{type(self.model).__name__} ran {packing.calls} of {depth} attention layers without the packed layout "
                    "(its forward does not pass attention kwargs through); set packing=False for it"
                )
            return pool(hidden, batch)
        past = self._prefixes.past(self.model, batch.prefix, depth, batch.input_ids.shape[0]) if batch.prefix else None
        hidden = forward_hidden(
            self.model, batch.input_ids, batch.attention_mask, plan, batch.last_index, batch.placeholder_index, past, entry=entry
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
        """The one batching loop (:func:`~echo_embeddings.engine.schedule.run_batches`) with this
        engine's collation and token budget; every surface uses it (the sentence-transformers model
        passes its whole module list as ``forward``)."""
        positive_int("batch_size", batch_size)
        return run_batches(
            prepared, lambda items: self.collate(items, pooling), forward, batch_size=batch_size, max_tokens=self.batch_token_budget,
            empty=lambda: torch.empty((0, self.hidden_size)), progress=progress,
        )

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
