"""Which precision a decoder runs in: ``dtype="auto"`` per device, and int8 weights on request.

``auto`` picks bf16 where the hardware runs it natively and fp32 elsewhere:

- CUDA: bf16 where the GPU supports it (Ampere and later), else fp32.
- CPU: bf16 when the CPU has native bf16 instructions (AVX512-BF16 or AMX: current Xeon and
  EPYC), else fp32, since CPUs without them emulate bf16 slowly. On this project's 2-core
  AVX512-BF16 machine, bf16 ran SmolLM2-135M echo 1.83x and Gemma 3 270M 1.55x as fast as fp32,
  with cosine to the fp32 vectors at least 0.9999 and STS-B dev and SciFact within 0.21 points
  (``docs/generated/cpu_precision.md``).

``quantize="int8"`` stores the decoder's linear layers as int8 weights (torchao's weight-only
int8; activations keep the model's dtype), halving their memory against bf16; on that CPU it was
no faster than bf16. The choice made
is kept as a short text that ``repr(model[0])`` and ``fast_paths`` show.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import torch

QUANTIZATIONS = ("int8",)
"""What ``quantize=`` accepts."""


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products in hardware (AVX512-BF16 or AMX-BF16).

    Read from ``/proc/cpuinfo`` on Linux; elsewhere (macOS, Windows) False, so ``auto`` stays
    fp32 where the speed was not measured."""
    if platform.system() != "Linux":
        return False
    try:
        return native_bf16_in(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


def native_bf16_in(cpuinfo: str) -> bool:
    """Whether a ``/proc/cpuinfo`` text lists a native bf16 instruction set on every core."""
    cores = [set(line.split(":", 1)[1].split()) for line in cpuinfo.splitlines() if line.startswith("flags")]
    return bool(cores) and all(flags & {"avx512_bf16", "amx_bf16"} for flags in cores)


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``torch.bfloat16``, ``"bfloat16"``, ``"bf16"``, ``"float32"``, ``"fp32"``, ... as a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
    name = names.get(str(dtype).lower().removeprefix("torch."), str(dtype).lower().removeprefix("torch."))
    found = getattr(torch, name, None)
    if not isinstance(found, torch.dtype) or not found.is_floating_point:
        raise ValueError(f"dtype {dtype!r}: expected 'auto', 'float32', 'bfloat16' or 'float16' (or a torch dtype)")
    return found


def auto_dtype(device: torch.device) -> tuple[torch.dtype, str]:
    """The dtype ``auto`` picks on ``device``, and why."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "auto: this GPU supports bf16"
        return torch.float32, "auto: this GPU has no bf16"
    if device.type == "cpu":
        if cpu_has_native_bf16():
            return torch.bfloat16, "auto: this CPU has native bf16 (AVX512-BF16/AMX)"
        return torch.float32, "auto: this CPU has no native bf16, which would be emulated slowly"
    return torch.float32, f"auto: fp32 on {device.type}"


DTYPE_VARIABLE = "ECHO_EMBEDDINGS_DTYPE"
"""An environment variable that, when set (``float32``, ``bfloat16``, ...), is what ``auto`` means
in this process: one switch for a deployment, or for a test suite that compares in fp32."""


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> tuple[torch.dtype, str]:
    """``(dtype, why)``: ``None`` or ``"auto"`` decided per device (or by ``ECHO_EMBEDDINGS_DTYPE``),
    anything else as given."""
    if dtype is None or (isinstance(dtype, str) and dtype.lower() == "auto"):
        if os.environ.get(DTYPE_VARIABLE, "auto").lower() != "auto":
            return as_dtype(os.environ[DTYPE_VARIABLE]), f"auto: {DTYPE_VARIABLE}={os.environ[DTYPE_VARIABLE]}"
        return auto_dtype(device)
    return as_dtype(dtype), "as asked"


def check_quantization(quantize: str | None) -> str | None:
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize={quantize!r}: expected one of {', '.join(QUANTIZATIONS)} or None")
    return quantize


def quantize_int8(model: torch.nn.Module) -> None:
    """Store the weights of ``model``'s linear layers as int8 (torchao's weight-only int8), in place.

    Embeddings and norms keep their dtype. Needs ``pip install torchao`` (the ``int8`` extra)."""
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as error:
        raise ModuleNotFoundError("quantize='int8' needs torchao: pip install 'echo-embeddings[int8]'") from error
    quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda module, _name: isinstance(module, torch.nn.Linear))


def describe(model: torch.nn.Module) -> str:
    """The decoder's precision as shown by ``fast_paths``: ``"bfloat16"``, ``"bfloat16, int8 weights"``, ..."""
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            if type(module.weight).__name__ not in ("Parameter", "Tensor"):
                return f"{dtype}, int8 weights"
            break
    return dtype
