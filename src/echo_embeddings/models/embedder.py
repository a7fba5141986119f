"""``EchoEmbedder``: templates, decoder and pooling as one sentence-transformers input module.

``EchoSentenceTransformer(modules=[EchoEmbedder(...), ...])`` is a complete embedding model. The
module templates, runs the decoder and pools; modules after it (``Dense``, ``Normalize``, a
whitening, ...) run on its output. ``save`` writes its tokenizer, ``echo_embeddings_config.json``
(exactly the settings that run) and the decoder's weights, unless they need not be copied:

- with a LoRA adapter, only the adapter, and the config names the base it goes on;
- with weights unchanged since they were loaded from an alias or a Hugging Face id (a model used
  as it came, perhaps with a whitening after it), no weights: the config names that base, and a
  load takes the weights from there. ``save(..., self_contained=True)`` on the model writes them
  anyway (a folder that needs nothing else); a base loaded from a local folder or file is always
  copied, since that path need not exist where the folder goes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from sentence_transformers.base.modules.input_module import InputModule

from .. import lora
from .._version import __version__
from ..engine.batching import Batch
from ..engine.engine import Engine
from ..engine.inputs import check_texts
from ..engine.loading import Placement, load_decoder
from ..engine.presets import CHECKPOINT_PRESETS, PRESETS, Preset
from ..engine.settings import SETTING_NAMES, EmbedderSettings, with_setting_attributes
from ..engine.template import Template

logger = logging.getLogger(__name__)

CONFIG_FILE = "echo_embeddings_config.json"
FINGERPRINT_STRIDE = 1009
"""Every 1009th element of each weight goes into the fingerprint that tells whether the decoder
changed since it was loaded (an optimizer step or a merge changes nearly all of them)."""


def weights_fingerprint(model: torch.nn.Module) -> tuple[float | str, ...]:
    """A cheap summary of a decoder's weights: a strided sample of each parameter, summed."""
    with torch.no_grad():
        return tuple(_sample_sum(p) for p in model.parameters())


def _sample_sum(p: torch.Tensor) -> float | str:
    if p.device.type == "meta":
        return "offloaded"  # accelerate keeps an offloaded weight elsewhere; it cannot train there
    if type(p.data) is not torch.Tensor:
        return type(p.data).__name__  # a quantized weight (torchao): fixed once quantized
    return float(p.detach().reshape(-1)[::FINGERPRINT_STRIDE].double().sum())


@with_setting_attributes(lambda module: module.engine)
class EchoEmbedder(InputModule):
    """Templates, decoder and pooling as one sentence-transformers input module.

    Args:
        model_name_or_path: an alias (``smollm2-135m``, ``gemma3-270m``), a Hugging Face id or
            folder, or a ``.gguf`` file; or None with ``model`` and ``tokenizer``.
        strategy: a preset name, :class:`Preset`, :class:`Template` or template string (default
            ``echo``, or the released checkpoints' own templates when loaded by their id).
        device: where to load the decoder (CUDA when available, else the CPU).
        dtype: its precision: ``"auto"`` (default) is bf16 on GPUs and on CPUs with native bf16,
            fp32 elsewhere (:mod:`~echo_embeddings.engine.precision`); or ``"float32"``,
            ``"bfloat16"``, ``"float16"``.
        quantize: ``"int8"`` stores the decoder's linear layers as int8 weights (torchao).
        device_map: accelerate's placement (``"auto"`` shards over the GPUs); instead of ``device``.
        quantization_config: a transformers quantization config (bitsandbytes 8-bit / 4-bit).
        model: an already loaded decoder; it is not modified.
        tokenizer: the loaded decoder's tokenizer.
        model_kwargs: extra keyword arguments for ``AutoModel.from_pretrained``.

    ``dtype``, ``quantize``, ``device_map``, ``quantization_config`` and ``model_kwargs`` are the
    machine's choices: they are shown in ``repr`` and never saved (a saved model loads in the
    precision and placement its new machine asks for).
        **settings: the :class:`~echo_embeddings.engine.settings.EmbedderSettings` fields
            (``output_layer``, ``tp_layers``, ``max_seq_length``, ``prefix_cache``, ``packing``, ...).
            Each is an attribute of the module too; setting it takes effect at once and is saved.
    """

    config_file_name = CONFIG_FILE
    config_keys = list(SETTING_NAMES)
    forward_kwargs = {"instruction", "output_dtype"}
    """``model.encode(texts, instruction=...)`` fills the query template's ``{instruction}``;
    ``output_dtype`` (given by the model) is the dtype of the module that takes the vectors next."""

    def __init__(
        self,
        model_name_or_path: str | None = None,
        strategy: str | Preset | Template | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        quantize: str | None = None,
        device_map: str | dict[str, Any] | None = None,
        quantization_config: Any = None,
        model: torch.nn.Module | None = None,
        tokenizer: Any = None,
        model_kwargs: dict[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        super().__init__()
        self.source = None if model is not None else model_name_or_path
        """Where the decoder was loaded from (a saved adapter names it as its base); None for a model object."""
        self.lora: dict[str, Any] | None = None
        """The LoRA adapter's settings, or None (see :func:`echo_embeddings.add_lora`)."""
        if strategy is None:
            strategy = CHECKPOINT_PRESETS.get(str(model_name_or_path), "echo")
        EmbedderSettings(strategy=strategy, **settings)  # type: ignore[arg-type]  # fail before loading any weights
        self.placement: Placement | None = None
        """Precision and placement chosen when the decoder was loaded (None for a model object)."""
        if model is None:
            if model_name_or_path is None:
                raise ValueError("Pass a model id, folder, .gguf path or alias, or a loaded model and tokenizer")
            placement = {k: v for k, v in (("device_map", device_map), ("quantization_config", quantization_config)) if v is not None}
            model, tokenizer, self.placement = load_decoder(
                model_name_or_path, device=device, dtype=dtype, quantize=quantize, **placement, **(model_kwargs or {})
            )
        elif tokenizer is None:
            raise ValueError("A loaded model needs its tokenizer too")
        elif quantize or device_map is not None or quantization_config is not None:
            raise ValueError("quantize, device_map and quantization_config apply when loading; a model passed in is used as it is")
        self.model = model  # a submodule: .to(), parameters() and state_dict() see the decoder
        self.engine = Engine(model, tokenizer, strategy, **settings)
        self.self_contained = False
        """Whether ``save`` writes the decoder's weights even when a config reference would do (set
        for one save by ``EchoSentenceTransformer.save(..., self_contained=True)``)."""
        self._loaded_weights = weights_fingerprint(model) if self.source is not None else None

    @property
    def tokenizer(self) -> Any:  # type: ignore[override]
        return self.engine.tokenizer

    def get_embedding_dimension(self) -> int:
        return self.engine.hidden_size

    # -- sentence-transformers protocol -----------------------------------------------------
    def _has_instruction(self, task: str | None) -> bool:
        return any(p.kind == "instruction" for t in self.engine.preset.templates(task) for p in t.pieces)

    def prompt_task(self, prompt: str | None, task: str | None) -> str | None:
        """The task whose templates run for a sentence-transformers ``prompt``: ``task`` itself,
        except that a prompt for symmetric inputs (no task) goes to the query templates when only
        they have an ``{instruction}`` (echo's templates): that is how instructed symmetric tasks
        run, as the echo paper ran MTEB."""
        if prompt and task is None and not self._has_instruction(None) and self._has_instruction("query"):
            return "query"
        return task

    def _with_prompt(self, texts: list[str], prompt: str | None, task: str | None, instruction: str | None) -> tuple[list[str], str | None]:
        """A sentence-transformers ``prompt`` fills the ``{instruction}`` of the templates of
        :meth:`prompt_task`; where they have none, it is prepended to the text, as
        sentence-transformers does."""
        if not prompt:
            return texts, instruction
        if self._has_instruction(task):
            return texts, instruction if instruction is not None else prompt
        return [prompt + t for t in texts], instruction

    def prepare(self, inputs: Sequence[str], prompt: str | None = None, task: str | None = None, instruction: str | None = None) -> list:
        """Each text tokenized once and laid into the templates of ``task`` (see :meth:`prompt_task`)."""
        task = self.prompt_task(prompt, task)
        texts, instruction = self._with_prompt(check_texts(inputs), prompt, task, instruction)
        return self.engine.prepare(texts, task, instruction)

    def preprocess(
        self, inputs: Sequence[str], prompt: str | None = None, task: str | None = None, instruction: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Lay texts into the template for ``task`` ("query", "document" or None): the features of
        one batch, as the trainer's collator and ``model.preprocess`` expect."""
        prepared = self.prepare(inputs, prompt, task, instruction)
        return self.engine.collate(prepared, self.engine.preset.templates(self.prompt_task(prompt, task))[0].pooling).as_features()

    def forward(self, features: dict[str, Any], output_dtype: torch.dtype | None = None, **kwargs: Any) -> dict[str, Any]:
        """Pooled vectors, in fp32 whatever the decoder's dtype, or in ``output_dtype``."""
        vectors = self.engine.forward(Batch.from_features(features))
        features["sentence_embedding"] = vectors if output_dtype is None else vectors.to(output_dtype)
        return features

    # -- LoRA -------------------------------------------------------------------------------
    def add_lora(self, **settings: Any) -> None:
        """Put a LoRA adapter into the decoder (see :func:`echo_embeddings.add_lora`)."""
        if self.lora is not None:
            raise ValueError("This model already has a LoRA adapter; merge it first (echo_embeddings.merge_lora)")
        if self.placement is not None and self.placement.quantization == "int8":
            raise ValueError("An int8-quantized decoder (quantize='int8') is for inference; load it without quantize to train")
        resolved = lora.lora_settings(**settings)
        lora.inject(self.model, resolved)
        self.lora = resolved

    def merge_lora(self) -> None:
        """Fold the adapter into the decoder's weights; a save then writes full weights."""
        if self.lora is None:
            raise ValueError("This model has no LoRA adapter to merge")
        lora.merge(self.model)
        self.lora = None

    def base_reference(self) -> str:
        """What a saved adapter names as its base: the alias, id, ``.gguf`` or absolute folder it was loaded from."""
        if self.source is None:
            raise ValueError(
                "This model was built from a decoder object, so a saved adapter could not name its base; "
                "call echo_embeddings.merge_lora(model) first to save full weights"
            )
        return str(Path(self.source).resolve()) if Path(self.source).exists() else self.source

    def unchanged_base(self) -> str | None:
        """The alias or Hugging Face id a save can name instead of writing the decoder's weights:
        set when the weights are those loaded from there (no adapter, no training since)."""
        if self.self_contained or self.lora is not None or self.source is None or self._loaded_weights is None:
            return None
        if Path(self.source).exists() or self.source.lower().endswith(".gguf"):
            return None  # a local path need not exist where the saved folder goes
        return self.source if self.weights_as_loaded() else None

    def weights_as_loaded(self) -> bool:
        """Whether the decoder's weights are still those loaded from ``source`` (False for a model
        object handed in: nothing was loaded)."""
        return self._loaded_weights is not None and weights_fingerprint(self.model) == self._loaded_weights

    # -- save / load ------------------------------------------------------------------------
    def get_config_dict(self) -> dict[str, Any]:
        config = self.engine.config()
        if self.lora is not None:
            config["lora"] = self.lora
            config["base_model"] = self.base_reference()
        elif (base := self.unchanged_base()) is not None:
            config["base_model"] = base
        config["requires"] = f"echo-embeddings>={__version__}"
        return config

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        """The decoder's weights; only the adapter with a LoRA adapter; none when the weights are
        an alias's or a hub id's as loaded (the config names the base)."""
        Path(output_path).mkdir(parents=True, exist_ok=True)
        if self.lora is not None:
            lora.save_adapter(self.model, output_path)
        elif self.unchanged_base() is None:
            if self.placement is not None and self.placement.quantization:
                raise ValueError(
                    f"This decoder's weights are {self.placement.quantization}-quantized, a choice of this machine that a save "
                    "does not keep: save it from a model loaded without quantization (a model loaded from an alias or a "
                    "Hugging Face id saves without its weights, naming the base, and can be saved quantized)"
                )
            self.model.save_pretrained(output_path, safe_serialization=safe_serialization)
        stale = Path(output_path) / lora.ADAPTER_WEIGHTS
        if self.lora is None and stale.exists():  # an earlier save's adapter (e.g. before merge_lora): the new config does not name it
            stale.unlink()
            logger.info("removed %s: an earlier save's adapter, which this save's config does not load", stale)
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
        adapter, base = config.pop("lora", None), config.pop("base_model", None)
        settings = EmbedderSettings.from_config(config, f"{folder}/{CONFIG_FILE}")
        model_kwargs = dict(kwargs.get("model_kwargs") or {})
        dtype = model_kwargs.pop("dtype", None) or model_kwargs.pop("torch_dtype", None)
        quantize = model_kwargs.pop("quantize", None)
        device = kwargs.get("device") if model_kwargs.get("device_map") is None and model_kwargs.get("quantization_config") is None else None
        given = {name: getattr(settings, name) for name in SETTING_NAMES}
        module = cls(base or str(folder), dtype=dtype, quantize=quantize, device=device, model_kwargs=model_kwargs, **given)
        if adapter:
            module.add_lora(**adapter)
            lora.load_adapter(module.model, folder)
        return module

    def __repr__(self) -> str:
        config = {key: getattr(self, key) for key in self.config_keys}
        loaded = {"loaded_as": str(self.placement)} if self.placement is not None else {}
        return f"EchoEmbedder({config | {'architecture': type(self.model).__name__, **loaded, **self.engine.fast_paths}})"
