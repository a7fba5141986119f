"""The sentence-transformers surface: one input module that templates, runs the decoder and pools.

``SentenceTransformer(modules=[EchoEmbedder(...)])`` is a complete embedding model; ``save``
writes the decoder, its tokenizer and ``echo_embeddings_config.json`` into one folder.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules.input_module import InputModule
from tqdm.auto import tqdm

from . import __version__
from .engine import DEFAULT_MAX_SEQ_LENGTH, Batch, Embedder, as_preset, check_texts, chunked, known_length
from .hooks import LayerPlan, tp_defaults
from .loading import ensure_pad_token, load_decoder
from .templates import CHECKPOINT_PRESETS, DEFAULT_INSTRUCTION, PRESETS, Pooling, Preset, Template

CONFIG_FILE = "echo_embeddings_config.json"


class EchoEmbedder(InputModule):
    """Templates, decoder and pooling as one sentence-transformers input module."""

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
    ]

    def __init__(
        self,
        model_name_or_path: str | None = None,
        strategy: str | Preset | Template | None = None,
        *,
        pooling: Pooling = "mean",
        instruction: str = DEFAULT_INSTRUCTION,
        max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH,
        output_layer: int | None = None,
        final_norm: bool = False,
        tp_layers: Sequence[int] | None = None,
        placeholder_token: str | int | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        model: torch.nn.Module | None = None,
        tokenizer: Any = None,
        model_kwargs: dict[str, Any] | None = None,
        requires: str | None = None,  # written by save() for readers; not needed to load
    ) -> None:
        super().__init__()
        if model is None:
            if model_name_or_path is None:
                raise ValueError("Pass a model id, folder, .gguf path or alias, or a loaded model and tokenizer")
            model, tokenizer = load_decoder(model_name_or_path, device=device, dtype=dtype, **(model_kwargs or {}))
        elif tokenizer is None:
            raise ValueError("A loaded model needs its tokenizer too")
        ensure_pad_token(tokenizer)
        if strategy is None:
            strategy = CHECKPOINT_PRESETS.get(str(model_name_or_path), "echo")
        preset = as_preset(strategy, pooling)
        if preset.token_prepending and (tp_layers is None or output_layer is None):
            defaults = tp_defaults(model, preset.name)
            if tp_layers is None and defaults.tp_start == defaults.tp_stop:
                warnings.warn(
                    f"Token prepending is off by default for this model: it did not help on the development sets. "
                    f"'{preset.name}' runs as its base prompt; pass tp_layers=(start, stop) to force it.",
                    stacklevel=2,
                )
            tp_layers = (defaults.tp_start, defaults.tp_stop) if tp_layers is None else tp_layers
            output_layer = defaults.output_layer if output_layer is None else output_layer
        # Saved as text: a preset name, or a template string with its pooling.
        if isinstance(strategy, Template):
            strategy, pooling = strategy.spec, strategy.pooling
        elif isinstance(strategy, Preset):
            if PRESETS.get(strategy.name) is not strategy:
                raise ValueError(f"Register preset {strategy.name!r} (register_preset) so that a saved model can find it again")
            strategy = strategy.name
        self.strategy: str = strategy
        self.pooling: Pooling = pooling
        self.output_layer = -1 if output_layer is None else int(output_layer)
        self.final_norm = final_norm
        self.tp_layers = [int(i) for i in tp_layers] if tp_layers is not None else None
        self.placeholder_token = placeholder_token
        self.model = model
        self.embedder = Embedder(
            model,
            tokenizer,
            preset,
            LayerPlan(self.output_layer, final_norm, *(self.tp_layers or (0, 0))),
            instruction,
            max_seq_length,
            placeholder_token,
        )

    # -- settings that live on the engine ---------------------------------------------------
    @property
    def tokenizer(self) -> Any:  # type: ignore[override]
        return self.embedder.tokenizer

    @property
    def instruction(self) -> str:
        return self.embedder.instruction

    @instruction.setter
    def instruction(self, value: str) -> None:
        self.embedder.instruction = value

    @property
    def max_seq_length(self) -> int:
        return self.embedder.max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.embedder.max_seq_length = int(value)

    def get_embedding_dimension(self) -> int:
        return self.embedder.hidden_size

    get_sentence_embedding_dimension = get_embedding_dimension

    # -- sentence-transformers protocol -----------------------------------------------------
    def preprocess(self, inputs: Sequence[str], prompt: str | None = None, task: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """Lay texts into the template for ``task`` ("query", "document" or None).

        A ``prompt`` from sentence-transformers fills the template's ``{instruction}``; a template
        without one gets the prompt prepended to the text, as sentence-transformers does.
        """
        texts = check_texts(inputs)
        instruction = None
        if prompt:
            if any(p.kind == "instruction" for t in self.embedder.preset.templates(task) for p in t.pieces):
                instruction = prompt
            else:
                texts = [prompt + t for t in texts]
        return self.embedder.tokenize(texts, task, instruction).as_features()

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        features["sentence_embedding"] = self.embedder.forward(Batch.from_features(features))
        return features

    # -- save / load ------------------------------------------------------------------------
    def get_config_dict(self) -> dict[str, Any]:
        config = super().get_config_dict()
        config["requires"] = f"echo-embeddings>={__version__}"
        return config

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        self.model.save_pretrained(output_path, safe_serialization=safe_serialization)
        self.save_tokenizer(output_path)
        with open(os.path.join(output_path, CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(self.get_config_dict(), f, indent=2)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs: Any) -> EchoEmbedder:
        hub = {k: kwargs[k] for k in ("token", "cache_folder", "revision", "local_files_only") if k in kwargs}
        config = cls.load_config(model_name_or_path, subfolder=subfolder, **hub)
        folder = cls.load_dir_path(model_name_or_path, subfolder=subfolder, **hub) or model_name_or_path
        model_kwargs = dict(kwargs.get("model_kwargs") or {})
        dtype = model_kwargs.pop("dtype", None) or model_kwargs.pop("torch_dtype", None)
        return cls(str(folder), dtype=dtype, model_kwargs=model_kwargs, **config)

    def __repr__(self) -> str:
        return f"EchoEmbedder(model={type(self.model).__name__}, strategy={self.strategy!r}, output_layer={self.output_layer}, tp_layers={self.tp_layers})"


PROMPT_TASKS = {"query": "query", "document": "document", "passage": "document", "corpus": "document"}
"""Prompt names that select a template: evaluation harnesses (MTEB) pass ``prompt_name="query"``."""


class EchoSentenceTransformer(SentenceTransformer):
    """A SentenceTransformer that checks every input before any model work and maps the
    ``query``/``document`` prompt names to their templates."""

    def encode(self, inputs: Any = None, *args: Any, **kwargs: Any):  # type: ignore[override]
        if inputs is None:
            inputs = kwargs.pop("sentences")  # the older keyword
        if not isinstance(inputs, str):
            inputs = check_texts(inputs)
        if "task" not in kwargs and kwargs.get("prompt_name") in PROMPT_TASKS:
            kwargs["task"] = PROMPT_TASKS[kwargs["prompt_name"]]
        return super().encode(inputs, *args, **kwargs)

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


def is_saved_model(path: str | os.PathLike) -> bool:
    """A folder written by ``save`` whose modules are all ours or sentence-transformers' own."""
    modules = Path(path) / "modules.json"
    if not modules.is_file():
        return False
    types = [m["type"] for m in json.loads(modules.read_text(encoding="utf-8"))]
    return any(t.startswith("echo_embeddings.") for t in types) and all(
        t.startswith(("echo_embeddings.", "sentence_transformers.")) for t in types
    )
