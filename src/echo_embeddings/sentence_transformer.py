"""The sentence-transformers surface: the ``EchoEmbedder`` input module and the ``EchoSentenceTransformer`` model.

``EchoSentenceTransformer(modules=[EchoEmbedder(...), ...])`` is a complete embedding model. The
module templates, runs the decoder and pools; modules after it (``Dense``, ``Normalize``, a
whitening, ...) run on its output. ``save`` writes the decoder, its tokenizer and
``echo_embeddings_config.json`` (exactly the settings that run) into one folder.

Every way of encoding (``encode``, ``encode_query``/``encode_document``, ``stream``, the
multi-process pool, and through :mod:`echo_embeddings.adapter_cache` LangChain, LlamaIndex and the
CLI) ends in :meth:`EchoSentenceTransformer._inference`: token-count sorting, the token budget,
the whole module list, input order restored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules.input_module import InputModule
from sentence_transformers.util import batch_to_device, truncate_embeddings
from tqdm.auto import tqdm

from . import __version__
from .batching import Batch
from .engine import DEFAULT_BATCH_SIZE, Engine, check_texts, chunked, known_length
from . import late_chunking, lora
from .late_chunking import DEFAULT_CHUNK_TOKENS, Chunk, Chunking, Copies
from .loading import load_decoder
from .presets import CHECKPOINT_PRESETS, DEFAULT_INSTRUCTION, PRESETS, Preset
from .template import Pooling, Template

CONFIG_FILE = "echo_embeddings_config.json"


class _EngineSetting:
    """A module attribute that lives on the engine: reading or setting it reads or sets the
    engine's, so what the module reports (and saves) is always what runs."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, module: EchoEmbedder | None, owner: type | None = None) -> Any:
        return self if module is None else getattr(module.engine, self.name)

    def __set__(self, module: EchoEmbedder, value: Any) -> None:
        setattr(module.engine, self.name, value)


class EchoEmbedder(InputModule):
    """Templates, decoder and pooling as one sentence-transformers input module.

    Args:
        model_name_or_path: an alias (``smollm2-135m``, ``gemma3-270m``), a Hugging Face id or
            folder, or a ``.gguf`` file; or None with ``model`` and ``tokenizer``.
        strategy: a preset name, :class:`Preset`, :class:`Template` or template string (default
            ``echo``, or the released checkpoints' own templates when loaded by their id).
        pooling: ``"mean"`` or ``"last"``, for a template string only.
        instruction, max_seq_length, output_layer, final_norm, tp_layers, placeholder_token,
            max_batch_tokens: the :class:`~echo_embeddings.engine.Engine` settings. Each is an
            attribute of the module too; setting it takes effect at once and is saved.
        device, dtype: where and in which precision to load the decoder (CUDA in bf16 when
            available, else CPU in fp32).
        model, tokenizer: an already loaded decoder and tokenizer. Neither is modified.
        model_kwargs: extra keyword arguments for ``AutoModel.from_pretrained``.
    """

    config_file_name = CONFIG_FILE
    config_keys = [
        "strategy",
        "pooling",
        "instruction",
        "max_seq_length",
        "output_layer",
        "final_norm",
        "tp_layers",
        "placeholder_token",
        "max_batch_tokens",
    ]
    forward_kwargs = {"instruction"}
    """``model.encode(texts, instruction=...)`` fills the query template's ``{instruction}``."""

    strategy = _EngineSetting()
    pooling = _EngineSetting()
    instruction = _EngineSetting()
    max_seq_length = _EngineSetting()
    output_layer = _EngineSetting()
    final_norm = _EngineSetting()
    tp_layers = _EngineSetting()
    placeholder_token = _EngineSetting()
    max_batch_tokens = _EngineSetting()

    def __init__(
        self,
        model_name_or_path: str | None = None,
        strategy: str | Preset | Template | None = None,
        *,
        pooling: Pooling | None = None,
        instruction: str = DEFAULT_INSTRUCTION,
        max_seq_length: int | None = None,
        output_layer: int | None = None,
        final_norm: bool = False,
        tp_layers: Sequence[int] | None = None,
        placeholder_token: str | int | None = None,
        max_batch_tokens: int | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        model: torch.nn.Module | None = None,
        tokenizer: Any = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.source = None if model is not None else model_name_or_path
        """Where the decoder was loaded from (a saved adapter names it as its base); None for a model object."""
        self.lora: dict[str, Any] | None = None
        """The LoRA adapter's settings, or None (see :func:`echo_embeddings.add_lora`)."""
        if model is None:
            if model_name_or_path is None:
                raise ValueError("Pass a model id, folder, .gguf path or alias, or a loaded model and tokenizer")
            model, tokenizer = load_decoder(model_name_or_path, device=device, dtype=dtype, **(model_kwargs or {}))
        elif tokenizer is None:
            raise ValueError("A loaded model needs its tokenizer too")
        if strategy is None:
            strategy = CHECKPOINT_PRESETS.get(str(model_name_or_path), "echo")
        if isinstance(strategy, Preset) and PRESETS.get(strategy.name) is not strategy:
            raise ValueError(f"Register preset {strategy.name!r} (register_preset) so that a saved model can find it again")
        self.model = model  # a submodule: .to(), parameters() and state_dict() see the decoder
        self.engine = Engine(
            model,
            tokenizer,
            strategy,
            pooling=pooling,
            instruction=instruction,
            max_seq_length=max_seq_length,
            output_layer=output_layer,
            final_norm=final_norm,
            tp_layers=tp_layers,
            placeholder_token=placeholder_token,
            max_batch_tokens=max_batch_tokens,
        )

    @property
    def tokenizer(self) -> Any:  # type: ignore[override]
        return self.engine.tokenizer

    def get_embedding_dimension(self) -> int:
        return self.engine.hidden_size

    # -- sentence-transformers protocol -----------------------------------------------------
    def _with_prompt(self, texts: list[str], prompt: str | None, task: str | None, instruction: str | None) -> tuple[list[str], str | None]:
        """A sentence-transformers ``prompt`` fills the template's ``{instruction}``; a template
        without one gets the prompt prepended to the text, as sentence-transformers does."""
        if not prompt:
            return texts, instruction
        if any(p.kind == "instruction" for t in self.engine.preset.templates(task) for p in t.pieces):
            return texts, instruction if instruction is not None else prompt
        return [prompt + t for t in texts], instruction

    def prepare(self, inputs: Sequence[str], prompt: str | None = None, task: str | None = None, instruction: str | None = None) -> list:
        """Each text tokenized once and laid into the templates of ``task``."""
        texts, instruction = self._with_prompt(check_texts(inputs), prompt, task, instruction)
        return self.engine.prepare(texts, task, instruction)

    def preprocess(
        self, inputs: Sequence[str], prompt: str | None = None, task: str | None = None, instruction: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Lay texts into the template for ``task`` ("query", "document" or None): the features of
        one batch, as the trainer's collator and ``model.preprocess`` expect."""
        prepared = self.prepare(inputs, prompt, task, instruction)
        return self.engine.collate(prepared, self.engine.preset.templates(task)[0].pooling).as_features()

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        features["sentence_embedding"] = self.engine.forward(Batch.from_features(features))
        return features

    # -- LoRA -------------------------------------------------------------------------------
    def add_lora(self, **settings: Any) -> None:
        """Put a LoRA adapter into the decoder (see :func:`echo_embeddings.add_lora`)."""
        if self.lora is not None:
            raise ValueError("This model already has a LoRA adapter; merge it first (echo_embeddings.merge_lora)")
        resolved = lora.lora_settings(**settings)
        lora.inject(self.model, resolved)
        self.lora = resolved

    def merge_lora(self) -> None:
        """Fold the adapter into the decoder's weights; a save then writes full weights."""
        if self.lora is None:
            raise ValueError("This model has no LoRA adapter to merge")
        lora.merge(self.model)
        self.lora = None

    # -- save / load ------------------------------------------------------------------------
    def get_config_dict(self) -> dict[str, Any]:
        config = super().get_config_dict()
        if config["tp_layers"] is not None:
            config["tp_layers"] = list(config["tp_layers"])
        if self.lora is not None:
            config["lora"] = self.lora
            config["base_model"] = lora.base_reference(self)
        config["requires"] = f"echo-embeddings>={__version__}"
        return config

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        """The decoder's weights, or with a LoRA adapter only the adapter (its config names the base)."""
        if self.lora is not None:
            Path(output_path).mkdir(parents=True, exist_ok=True)
            lora.save_adapter(self.model, output_path)
        else:
            self.model.save_pretrained(output_path, safe_serialization=safe_serialization)
        self.save_tokenizer(output_path)
        self.save_config(output_path)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs: Any) -> EchoEmbedder:
        hub = {k: kwargs[k] for k in ("token", "cache_folder", "revision", "local_files_only") if k in kwargs}
        config = cls.load_config(model_name_or_path, subfolder=subfolder, **hub)
        folder = cls.load_dir_path(model_name_or_path, subfolder=subfolder, **hub) or model_name_or_path
        config.pop("requires", None)  # written for readers; not a setting
        if config.get("strategy") in PRESETS:
            config.pop("pooling", None)  # a named preset brings its own (0.1.0 files wrote "mean" for every preset)
        model_kwargs = dict(kwargs.get("model_kwargs") or {})
        dtype = model_kwargs.pop("dtype", None) or model_kwargs.pop("torch_dtype", None)
        device = kwargs.get("device")
        adapter, base = config.pop("lora", None), config.pop("base_model", None)
        module = cls(base if adapter else str(folder), dtype=dtype, device=device, model_kwargs=model_kwargs, **config)
        if adapter:
            module.add_lora(**adapter)
            lora.load_adapter(module.model, folder)
        return module

    def __repr__(self) -> str:
        config = {key: getattr(self, key) for key in self.config_keys}
        return f"EchoEmbedder({config | {'architecture': type(self.model).__name__, **self.engine.fast_paths}})"


PROMPT_TASKS = {"query": "query", "document": "document", "passage": "document", "corpus": "document"}
"""Prompt names that select a template: evaluation harnesses (MTEB) pass ``prompt_name="query"``."""


def _with_batch_size(args: tuple, kwargs: dict[str, Any], position: int) -> None:
    """Our default batch cap (the token budget decides below it) unless the caller gave one."""
    if len(args) <= position:
        kwargs.setdefault("batch_size", DEFAULT_BATCH_SIZE)


class EchoSentenceTransformer(SentenceTransformer):
    """A SentenceTransformer whose local encoding sorts texts by token count and fills batches to
    the engine's token budget, runs the whole module list, and restores input order. It checks
    every input before any model work and maps the ``query``/``document`` prompt names to their
    templates. ``batch_size`` defaults to 256: a cap, below which the token budget decides."""

    def encode(self, inputs: Any = None, *args: Any, **kwargs: Any):  # type: ignore[override]
        if inputs is None:
            if "sentences" not in kwargs:
                raise TypeError("encode() needs the texts to embed: model.encode(['a text', ...])")
            inputs = kwargs.pop("sentences")  # the older keyword
        if not isinstance(inputs, str):
            inputs = check_texts(inputs)
        if "task" not in kwargs and kwargs.get("prompt_name") in PROMPT_TASKS:
            kwargs["task"] = PROMPT_TASKS[kwargs["prompt_name"]]
        _with_batch_size(args, kwargs, 2)
        return super().encode(inputs, *args, **kwargs)

    def encode_query(self, inputs: Any = None, *args: Any, **kwargs: Any):  # type: ignore[override]
        _with_batch_size(args, kwargs, 2)
        return super().encode_query(inputs, *args, **kwargs)

    def encode_document(self, inputs: Any = None, *args: Any, **kwargs: Any):  # type: ignore[override]
        _with_batch_size(args, kwargs, 2)
        return super().encode_document(inputs, *args, **kwargs)

    @torch.inference_mode()
    def _inference(
        self,
        inputs: list,
        *,
        prompt: str | None,
        batch_size: int,
        show_progress_bar: bool,
        output_value: str | None,
        save_to_cpu: bool,
        normalize_embeddings: bool,
        truncate_dim: int | None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> Any:
        first = self[0] if len(self) else None
        if output_value != "sentence_embedding" or not isinstance(first, EchoEmbedder):
            return super()._inference(
                inputs, prompt=prompt, batch_size=batch_size, show_progress_bar=show_progress_bar, output_value=output_value,
                save_to_cpu=save_to_cpu, normalize_embeddings=normalize_embeddings, truncate_dim=truncate_dim, device=device, **kwargs,
            )
        device = self._resolve_inference_device(device)
        self.eval()
        task = kwargs.get("task")
        prepared = first.prepare(inputs, prompt, task, kwargs.get("instruction"))

        def forward(batch: Batch) -> torch.Tensor:
            embeddings = self(batch_to_device(batch.as_features(), device), **kwargs)["sentence_embedding"]
            if truncate_dim is not None:
                embeddings = truncate_embeddings(embeddings, truncate_dim)
            if normalize_embeddings:
                embeddings = torch.nn.functional.normalize(embeddings, p=2, dim=1)
            return embeddings.cpu() if save_to_cpu else embeddings

        with tqdm(total=len(inputs), desc="Embedding", disable=not show_progress_bar, unit="text") as bar:
            return first.engine.embed_prepared(
                prepared, forward, pooling=first.engine.preset.templates(task)[0].pooling, batch_size=batch_size, progress=bar
            )

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None, **kwargs: Any) -> None:
        """Gradient checkpointing on the decoder, under the name transformers' trainer calls (5.x).
        Train with the prefix cache off: checkpointed layers drop the key/value cache."""
        decoder = self[0].model
        enable = getattr(decoder, "activation_checkpointing_enable", None) or decoder.gradient_checkpointing_enable
        enable(activation_checkpointing_kwargs, **kwargs)

    def add_adapter(self, adapter_config: Any, adapter_name: str | None = None) -> None:
        """sentence-transformers' adapter method, run through peft's own API so that it works with
        the peft releases that install today: a ``peft.LoraConfig`` becomes the echo module's
        adapter (:func:`echo_embeddings.add_lora` with its rank, alpha, dropout, targets and layers)."""
        if adapter_name not in (None, "default"):
            raise ValueError("One adapter per model: leave adapter_name out")
        targets = adapter_config.target_modules
        if isinstance(targets, str):
            raise ValueError("Give target_modules as a list of module names; a regular expression is not supported here")
        layers = adapter_config.layers_to_transform
        self[0].add_lora(
            r=adapter_config.r, alpha=adapter_config.lora_alpha, dropout=adapter_config.lora_dropout,
            target_modules=sorted(targets) if targets else None, layers=[layers] if isinstance(layers, int) else layers,
        )

    def stream(
        self, texts: Iterable[str], *, chunk_size: int = 4096, show_progress_bar: bool = False, **encode_options: Any
    ) -> Iterator[np.ndarray]:
        """Encode an iterable of any length ``chunk_size`` texts at a time, yielding arrays in
        input order; the input is read lazily, so memory stays bounded. Write the result to disk
        with ``echo_embeddings.save_npy(model.stream(texts), "vectors.npy")``."""
        encode_options.setdefault("convert_to_numpy", True)
        with tqdm(total=known_length(texts), desc="Embedding", disable=not show_progress_bar, unit="text") as bar:
            for chunk in chunked(texts, chunk_size):
                yield self.encode(chunk, show_progress_bar=False, **encode_options)
                bar.update(len(chunk))


    def encode_chunks(
        self,
        documents: Sequence[str],
        chunk_spans: Sequence[Sequence[tuple[int, int]]] | None = None,
        *,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        chunking: Chunking = "late",
        task: str | None = "document",
        window_overlap: int | None = None,
        copies: Copies = "all",
        batch_size: int = DEFAULT_BATCH_SIZE,
        normalize_embeddings: bool = False,
        show_progress_bar: bool = False,
    ) -> list[list[Chunk]]:
        """Split documents into chunks and embed each chunk; with ``chunking="late"`` (the default)
        every chunk vector is pooled from the whole document's forward (late chunking).

        Args:
            documents: the texts to chunk; none may be empty.
            chunk_spans: per document, ``(start, end)`` character spans from any splitter, in
                order and not overlapping (gaps are read as context but not pooled). None splits
                by tokens.
            chunk_tokens: chunk size when splitting by tokens (a chunk ends at a sentence end in
                its second half, if there is one).
            chunking: ``"late"`` pools each chunk's tokens from the document's forward (needs a
                mean-pooling strategy: echo pools the second copy, ``mean`` its single copy);
                ``"naive"`` embeds each chunk's text alone, for comparison.
            task: which template reads the document (default ``"document"``).
            window_overlap: tokens shared by consecutive windows for documents longer than a
                window (``max_seq_length`` with the template and every copy); default
                ``min(256, window // 4)``.
            copies: late chunking pools a chunk's tokens from ``"all"`` copies of the document
                (echo: the first copy, read up to the chunk, and the second, read in full) or from
                the template's ``"pooled"`` copy only (echo: the second).
            batch_size, normalize_embeddings, show_progress_bar: as in :meth:`encode`.

        Returns:
            For each document, its :class:`~echo_embeddings.late_chunking.Chunk` list: ``text``,
            ``start``/``end`` character offsets (``document[start:end] == text``) and
            ``embedding`` (a float32 array, after every module of the model).
        """
        if chunking not in late_chunking.CHUNKINGS:
            raise ValueError(f"chunking must be 'late' or 'naive', got {chunking!r}")
        self.eval()
        engine = self[0].engine
        docs = late_chunking.tokenize_documents(engine, check_texts(documents), task)
        spans = late_chunking.resolve_spans(docs, chunk_spans, chunk_tokens)
        if chunking == "naive":
            texts = [doc.text[a:b].strip() or doc.text[a:b] for doc, doc_spans in zip(docs, spans) for a, b in doc_spans]
            options = {"task": task, "batch_size": batch_size, "normalize_embeddings": normalize_embeddings, "show_progress_bar": show_progress_bar}
            return late_chunking.as_chunks(docs, spans, self.encode(texts, convert_to_tensor=True, **options).cpu())
        with tqdm(desc="Late chunking", disable=not show_progress_bar, unit="window") as bar:
            ranges = [late_chunking.spans_to_tokens(doc, doc_spans) for doc, doc_spans in zip(docs, spans)]
            pooled = late_chunking.late_chunk_vectors(
                engine, docs, ranges, task=task, window_overlap=window_overlap, copies=copies, batch_size=batch_size, progress=bar
            )
        vectors = late_chunking.after_first_module(self, torch.cat(pooled))
        if normalize_embeddings:
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        return late_chunking.as_chunks(docs, spans, vectors)

    def stream_chunks(
        self,
        documents: Iterable[str],
        chunk_spans: Iterable[Sequence[tuple[int, int]]] | None = None,
        *,
        documents_per_call: int = 256,
        **options: Any,
    ) -> Iterator[list[Chunk]]:
        """:meth:`encode_chunks` over an iterable of any length, read lazily: yields each
        document's chunks in input order, ``documents_per_call`` documents at a time."""
        span_iter = iter(chunk_spans) if chunk_spans is not None else None
        for group in chunked(documents, documents_per_call):
            spans = None
            if span_iter is not None:
                spans = [next(span_iter, None) for _ in group]
                if any(s is None for s in spans):
                    raise ValueError("chunk_spans ran out before the documents did; give one list of spans per document")
            yield from self.encode_chunks(group, spans, **options)


def is_saved_model(path: str | os.PathLike) -> bool:
    """A folder written by ``save`` whose modules are all ours or sentence-transformers' own."""
    modules = Path(path) / "modules.json"
    if not modules.is_file():
        return False
    types = [m["type"] for m in json.loads(modules.read_text(encoding="utf-8"))]
    return any(t.startswith("echo_embeddings.") for t in types) and all(
        t.startswith(("echo_embeddings.", "sentence_transformers.")) for t in types
    )
