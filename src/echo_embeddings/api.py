"""The public functions: :func:`load` a model, :func:`add_lora` / :func:`merge_lora` for fine-tuning.
``echo_embeddings`` re-exports them; modules inside the package import them from here."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from .engine.aliases import DEFAULT_MODEL
from .engine.loading import default_device
from .engine.precision import resolve_dtype
from .engine.presets import Preset
from .engine.template import Template
from .models import model_card
from .models.embedder import EchoEmbedder
from .models.prompts import default_prompts
from .models.sentence_transformer import EchoSentenceTransformer


HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def is_saved_model(path: str | os.PathLike) -> bool:
    """A saved echo model, named by its folder (a hub snapshot folder included) or by a Hugging
    Face id (found through the hub, or offline through the local cache), whose modules are all
    ours or sentence-transformers' own."""
    modules = _modules_file(str(path))
    if modules is None:
        return False
    types = [m["type"] for m in json.loads(modules.read_text(encoding="utf-8"))]
    return any(t.startswith("echo_embeddings.") for t in types) and all(
        t.startswith(("echo_embeddings.", "sentence_transformers.")) for t in types
    )


def _modules_file(name: str) -> Path | None:
    """``modules.json`` of a folder, or of a hub id's repository (None where there is none)."""
    local = Path(name).expanduser()
    if local.exists() or not HUB_ID.match(name):
        return local / "modules.json" if (local / "modules.json").is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(name, "modules.json"))
    except (OSError, ValueError, EntryNotFoundError):  # no such file or repository, or offline and not cached
        return None


def load(
    model_name_or_path: str = DEFAULT_MODEL,
    strategy: str | Preset | Template | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    quantize: str | None = None,
    device_map: str | dict[str, Any] | None = None,
    quantization_config: Any = None,
    model_kwargs: dict[str, Any] | None = None,
    **options: Any,
) -> EchoSentenceTransformer:
    """A ``SentenceTransformer`` that embeds with ``strategy`` on a causal LM.

    ``model_name_or_path`` is a Hugging Face id or folder, a ``.gguf`` file, an embedded alias
    (``smollm2-135m``, ``gemma3-270m``), or a model written by ``save`` / ``push_to_hub``: its
    folder or its hub id (offline, from the local cache); a saved model keeps its strategy, layer,
    whitening and adapter. ``options`` are the
    :class:`EchoEmbedder` settings (``output_layer``, ``tp_layers``, ``max_seq_length``, ``prefix_cache``, ``packing``, ...:
    the fields of :class:`~echo_embeddings.engine.settings.EmbedderSettings`).

    The machine's choices apply to saved models too and are never saved: ``dtype`` (``"auto"``:
    bf16 on GPUs and on CPUs with native bf16, else fp32), ``quantize="int8"`` (torchao int8
    weights), ``device_map`` (``"auto"`` shards over the GPUs) or ``quantization_config``
    (bitsandbytes) instead of ``device``, and ``model_kwargs`` for ``from_pretrained``.

    The model comes named for MTEB's result files, with a revision that follows its configuration
    (:func:`~echo_embeddings.models.model_card.name_for_results`), and with MTEB task instructions
    where its strategy was trained with them (:mod:`~echo_embeddings.models.prompts`).
    """
    machine = dict(model_kwargs or {})
    machine.update({k: v for k, v in (("device_map", device_map), ("quantization_config", quantization_config)) if v is not None})
    if is_saved_model(model_name_or_path):
        if strategy is not None or options:
            raise ValueError("A saved echo model keeps its own settings; change them on model[0] after loading")
        # Resolved here: sentence-transformers warns about any bf16 CPU load it did not see asked for.
        machine["dtype"], reason = resolve_dtype(dtype, torch.device(device) if device is not None else default_device())
        if quantize is not None:
            machine["quantize"] = quantize
        # Only our own and sentence-transformers' classes are imported: is_saved_model checked that.
        model = EchoSentenceTransformer(str(model_name_or_path), trust_remote_code=True, device=str(device) if device else None, model_kwargs=machine)
        first = model[0]
        if isinstance(first, EchoEmbedder) and first.placement is not None:
            first.placement = dataclasses.replace(first.placement, reason=reason)
        model.load_arguments = {"model_name_or_path": str(model_name_or_path)}
        model_card.name_for_results(model, str(model_name_or_path), saved=True)
        return model
    module = EchoEmbedder(model_name_or_path, strategy, device=device, dtype=dtype, quantize=quantize, model_kwargs=machine, **options)
    # The task instructions for MTEB's prompt lookup, and empty "query"/"document" prompts.
    model = EchoSentenceTransformer(modules=[module], device=str(module.engine.device), prompts=default_prompts(module.engine.preset))
    model.load_arguments = {"model_name_or_path": str(model_name_or_path), "strategy": module.engine.preset.name if strategy is None else strategy, **options}
    model_card.name_for_results(model, str(model_name_or_path), saved=False)
    return model


def add_lora(
    model: EchoSentenceTransformer,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.0,
    target_modules: list[str] | None = None,
    layers: list[int] | None = None,
) -> EchoSentenceTransformer:
    """Put a LoRA adapter into the model's decoder, for fine-tuning; returns the model.

    Only the adapter trains; it starts at zero, so vectors are unchanged until training. ``save``
    then writes the adapter alone (a few percent of the full weights) and names the base model;
    ``load`` reattaches it.

    Args:
        model: a model from :func:`load`.
        r: LoRA rank.
        alpha: scale numerator: the update is scaled by ``alpha / r``.
        dropout: LoRA dropout.
        target_modules: names of the linear layers to adapt (default: the attention and MLP
            projections of Llama-style decoders).
        layers: decoder layer indices to adapt (default all); the top layers alone train faster.
    """
    model[0].add_lora(r=r, alpha=alpha, dropout=dropout, target_modules=target_modules, layers=layers)
    return model


def merge_lora(model: EchoSentenceTransformer) -> EchoSentenceTransformer:
    """Fold the LoRA adapter into the decoder's weights (same vectors); ``save`` then writes full weights."""
    model[0].merge_lora()
    return model
