"""What every command shares: the model and device arguments, checking them before any weights
load, loading the model a command runs, splitting comma lists.

The CLI's modules import torch and sentence-transformers only inside a command's ``run``, so
``--help`` and argument errors answer at once.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from ..data import DataError
from ..engine.aliases import ALIASES, DEFAULT_MODEL
from ..engine.presets import as_preset
from ..engine.settings import DEFAULT_BATCH_SIZE

__all__ = ["DEFAULT_BATCH_SIZE", "add_device", "check_model", "check_output_file", "load_model", "split"]


def split(values: list[str]) -> list[str]:
    """Comma-separated values from one or more arguments, blanks dropped."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def add_device(parser: Any, dtype_default: str = "auto", quantize: bool = True) -> None:
    """``--device``, ``--dtype`` and (for commands that only embed) ``--quantize``."""
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    parser.add_argument(
        "--dtype", default=None,
        help=f"float32, bfloat16 or float16 (default: {dtype_default})" + ("; auto is bf16 on GPUs and on CPUs with native bf16, else fp32" if dtype_default == "auto" else ""),
    )
    if quantize:
        parser.add_argument("--quantize", choices=["int8"], default=None, help="int8 weights for the decoder's linear layers (needs torchao)")


def check_model(name: str | None, strategy: str | None) -> None:
    """Fail before torch loads on a model name that cannot be right (a mistyped alias, a missing
    file) or an unknown strategy; a Hugging Face id is left to the hub."""
    name = name or DEFAULT_MODEL
    if strategy is not None:
        try:
            as_preset(strategy)
        except ValueError as error:
            raise DataError(f"--strategy: {error}") from None
    if name in ALIASES or Path(name).exists():
        return
    if name.lower().endswith(".gguf") or name.startswith((".", "/", "~")):
        raise DataError(f"--model {name}: no such file or folder")
    close = difflib.get_close_matches(name, list(ALIASES), n=1, cutoff=0.75)
    if close:
        raise DataError(f"--model {name}: not an embedded model; did you mean {close[0]!r}? (embedded: {', '.join(ALIASES)})")


def check_output_file(path: str, flag: str = "--out") -> None:
    """Fail before the model loads if ``path`` cannot be written: its folder must exist."""
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        raise DataError(f"{flag} {path}: the folder {parent} does not exist; create it first")
    if Path(path).is_dir():
        raise DataError(f"{flag} {path} is a folder; give a file name such as {Path(path) / 'vectors.npy'}")


def load_model(name: str | None, strategy: str | None, device: str | None, dtype: str | None = None, quantize: str | None = None) -> Any:
    """The model a command runs: a saved echo model keeps its own strategy (and its module list)."""
    from ..api import load

    check_model(name, strategy)
    try:
        return load(name or DEFAULT_MODEL, strategy, device=device, dtype=dtype, quantize=quantize)
    except ValueError as error:  # a saved model given a --strategy, a bad setting, ...
        raise DataError(str(error)) from error
