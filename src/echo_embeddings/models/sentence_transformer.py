"""``EchoSentenceTransformer``: a ``SentenceTransformer`` whose encoding runs the engine's batch schedule.

Every way of encoding (``encode``, ``encode_query``/``encode_document``, ``stream``, the
multi-process pool, and through :mod:`echo_embeddings.adapter_cache` LangChain, LlamaIndex and the
CLI) ends in :meth:`EchoSentenceTransformer._inference`: token-count sorting, the token budget,
the whole module list, input order restored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import batch_to_device, truncate_embeddings
from tqdm.auto import tqdm

from .. import late_chunking, lora, streaming
from ..engine.batching import Batch
from ..engine.inputs import TASK_NAMES, check_texts, normalize_task
from ..engine.settings import DEFAULT_BATCH_SIZE
from . import model_card
from .embedder import EchoEmbedder


def _with_batch_size(args: tuple, kwargs: dict[str, Any], position: int) -> None:
    """Our default batch cap (the token budget decides below it) unless the caller gave one."""
    if len(args) <= position:
        kwargs.setdefault("batch_size", DEFAULT_BATCH_SIZE)


class EchoSentenceTransformer(SentenceTransformer):
    """A SentenceTransformer whose local encoding sorts texts by token count and fills batches to
    the engine's token budget, runs the whole module list, and restores input order. It checks
    every input before any model work and maps the ``query``/``document`` prompt names (and
    MTEB's ``passage``/``corpus``) to their templates. ``batch_size`` defaults to 256: a cap, below
    which the token budget decides."""

    load_arguments: dict[str, Any] | None = None
    """The arguments :func:`echo_embeddings.load` built this model from (what a loader needs to
    build it again, see :func:`echo_embeddings.evaluation.mteb_meta.model_meta`); None otherwise."""
    loaded_configuration: str | None = None
    """The configuration fingerprint, without the prompts, when ``load`` returned the model."""
    revision_tracks_configuration = False
    """Set by ``load``: the card data's ``base_model_revision`` (MTEB's revision) is the
    configuration fingerprint, refreshed on each read of :attr:`model_card_data`."""

    @property
    def model_card_data(self) -> Any:
        """sentence-transformers' card data; its ``base_model_revision`` follows the configuration
        that runs where ``load`` named the model (:func:`~echo_embeddings.models.model_card.name_for_results`)."""
        data = self.__dict__["_model_card_data"]
        if self.revision_tracks_configuration:
            data.base_model_revision = model_card.configuration_fingerprint(self)
        return data

    @model_card_data.setter
    def model_card_data(self, value: Any) -> None:
        self.__dict__["_model_card_data"] = value

    @property
    def _device_map(self) -> Any:
        """sentence-transformers' record of a device map. A decoder placed by a ``device_map`` or
        a quantization library counts as one, so nothing moves it (not even
        ``SentenceTransformer.__init__``) and the modules after it follow it."""
        given = self.__dict__.get("_given_device_map")
        placement = getattr(self._modules.get("0"), "placement", None)
        return "placed when loaded" if given is None and placement is not None and placement.delegated else given

    @_device_map.setter
    def _device_map(self, value: Any) -> None:
        self.__dict__["_given_device_map"] = value

    def forward(self, input: dict[str, Any], **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """sentence-transformers' forward; the echo module pools in fp32 and hands the vectors on
        in the dtype of the next module with weights (sentence-transformers casts those, a
        ``Dense`` say, to the decoder's dtype)."""
        if isinstance(self._modules.get("0"), EchoEmbedder):
            weights = (p.dtype for module in list(self.children())[1:] for p in module.parameters() if p.is_floating_point())
            if (dtype := next(weights, None)) is not None:
                kwargs.setdefault("output_dtype", dtype)
        return super().forward(input, **kwargs)

    def encode(self, inputs: Any = None, *args: Any, **kwargs: Any):  # type: ignore[override]
        if inputs is None:
            if "sentences" not in kwargs:
                raise TypeError("encode() needs the texts to embed: model.encode(['a text', ...])")
            inputs = kwargs.pop("sentences")  # the older keyword
        if not isinstance(inputs, str):
            inputs = check_texts(inputs)
        if "task" in kwargs:
            kwargs["task"] = normalize_task(kwargs["task"])
        elif kwargs.get("prompt_name") in TASK_NAMES and kwargs.get("prompt_name") is not None:
            kwargs["task"] = normalize_task(kwargs["prompt_name"])
        _with_batch_size(args, kwargs, 2)
        if kwargs.get("output_value") == "token_embeddings":
            return self._token_embeddings(inputs, *args, **kwargs)
        return super().encode(inputs, *args, **kwargs)

    def _token_embeddings(
        self,
        inputs: str | list[str],
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        show_progress_bar: bool | None = None,
        output_value: str = "token_embeddings",
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: Any = None,
        normalize_embeddings: bool = False,
        task: str | None = None,
        **unused: Any,
    ) -> Any:
        """``encode(..., output_value="token_embeddings")``: per text, the states of the tokens of
        the text itself in the pooled copy (:func:`echo_embeddings.late_chunking.token_embeddings`),
        a list of ``[tokens, dim]`` arrays (tensors with ``convert_to_tensor`` or without
        ``convert_to_numpy``), or one for a single string."""
        if prompt:
            raise ValueError("token embeddings follow the text's own tokens; a prompt would add tokens that are not the text's. Use task= instead")
        if unused:
            raise TypeError(f"encode(output_value='token_embeddings') does not take {sorted(unused)}")
        single = isinstance(inputs, str)
        texts = [inputs] if single else list(inputs)
        vectors = late_chunking.token_embeddings(self, texts, task=task, batch_size=batch_size, show_progress_bar=bool(show_progress_bar))
        if normalize_embeddings:
            vectors = [torch.nn.functional.normalize(v, p=2, dim=1) for v in vectors]
        out = [v.numpy() for v in vectors] if convert_to_numpy and not convert_to_tensor else vectors
        return out[0] if single else out

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
        task = first.prompt_task(prompt, kwargs.get("task"))
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

    def save(self, path: str, *args: Any, self_contained: bool = False, **kwargs: Any) -> None:  # type: ignore[override]
        """sentence-transformers' ``save``. The decoder's weights are left out when they are those
        of the alias or Hugging Face id the model was loaded from (the config names it; loading
        takes them from there); ``self_contained=True`` writes them anyway. ``save_pretrained`` and
        ``push_to_hub`` come through here."""
        first = self[0] if isinstance(self[0], EchoEmbedder) else None
        if first is not None:
            first.self_contained = self_contained
        try:
            super().save(path, *args, **kwargs)
        finally:
            if first is not None:
                first.self_contained = False

    def _create_model_card(self, path: str, model_name: str | None = None, train_datasets: Any = "deprecated") -> None:
        """sentence-transformers' card, adapted so that its usage runs for an echo model (see
        :mod:`echo_embeddings.models.model_card`). The snippet names ``model_name`` (a hub id) or,
        for a local save, the folder as given to ``save``."""
        super()._create_model_card(path, model_name, train_datasets)
        card_path = Path(path) / "README.md"
        if not card_path.is_file() or not isinstance(self[0], EchoEmbedder):
            return
        reference = self.model_card_data.model_id or model_name or str(path)
        card_path.write_text(model_card.adapt(card_path.read_text(encoding="utf-8"), self, reference), encoding="utf-8")

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None, **kwargs: Any) -> None:
        """Gradient checkpointing on the decoder, under the name transformers' trainer calls (5.x).
        Train with the prefix cache off: checkpointed layers drop the key/value cache."""
        decoder = self[0].model
        enable = getattr(decoder, "activation_checkpointing_enable", None) or decoder.gradient_checkpointing_enable
        enable(activation_checkpointing_kwargs, **kwargs)

    def add_adapter(self, adapter_config: Any, adapter_name: str | None = None) -> None:
        """sentence-transformers' adapter method: a ``peft.LoraConfig`` becomes the echo module's
        adapter (:func:`echo_embeddings.add_lora` with its rank, alpha, dropout, targets and layers)."""
        if adapter_name not in (None, "default"):
            raise ValueError("One adapter per model: leave adapter_name out")
        self[0].add_lora(**lora.settings_from_peft(adapter_config))

    # The whole-corpus and long-document methods are the functions that implement them, bound as
    # methods (``self`` is their ``model``), so their signatures and docs are written once.
    stream = streaming.stream
    encode_chunks = late_chunking.encode_chunks
    stream_chunks = late_chunking.stream_chunks
