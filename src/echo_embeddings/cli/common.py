"""What every command shares: loading the model a command runs, splitting comma lists."""

from __future__ import annotations

from typing import Any

from ..api import load
from ..data import DataError
from ..engine.loading import DEFAULT_MODEL
from ..engine.settings import DEFAULT_BATCH_SIZE

__all__ = ["DEFAULT_BATCH_SIZE", "load_model", "split"]


def split(values: list[str]) -> list[str]:
    """Comma-separated values from one or more arguments, blanks dropped."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def load_model(name: str | None, strategy: str | None, device: str | None) -> Any:
    """The model a command runs: a saved echo model keeps its own strategy (and its module list)."""
    try:
        return load(name or DEFAULT_MODEL, strategy, device=device)
    except ValueError as error:  # a saved model given a --strategy, an unknown strategy, ...
        raise DataError(str(error)) from error
