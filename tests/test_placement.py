"""Placement by transformers and accelerate: a ``device_map`` or a ``quantization_config``
reaches ``from_pretrained``, nothing moves the model afterwards, and a model sharded over devices
(here the CPU and accelerate's disk offload, which run the same hooks as several GPUs) gives the
vectors of the unsharded one on every fast path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from helpers import save_tiny_model

import echo_embeddings

TEXTS = ["A man is playing a guitar.", "Dogs run in the park; cats sleep on the sofa.", "", "Über café naïve 🎸"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "decoder")


class FakeQuantization:
    """Stands for a bitsandbytes config (not installable without CUDA): only its passage is checked."""

    quant_method = "bitsandbytes"


def test_device_map_and_quantization_config_reach_from_pretrained_and_nothing_moves_the_model(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    real = transformers.AutoModel.from_pretrained

    def recording(path: str, *args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        kwargs.pop("quantization_config", None)
        model = real(path, *args, **kwargs)

        def refuse(*_args: Any, **_kwargs: Any) -> None:
            raise AssertionError("the decoder was moved or cast after a placed load")

        monkeypatch.setattr(model, "_apply", refuse)
        monkeypatch.setattr(model, "to", refuse)
        return model

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", recording)
    model = echo_embeddings.load(
        str(folder), device_map={"": "cpu"}, quantization_config=FakeQuantization(), model_kwargs={"revision": "main"}, dtype="float32"
    )
    assert seen["device_map"] == {"": "cpu"}
    assert isinstance(seen["quantization_config"], FakeQuantization)
    assert seen["revision"] == "main" and seen["dtype"] is torch.float32
    assert model[0].placement.delegated and model[0].placement.quantization == "bitsandbytes"
    assert "bitsandbytes weights" in repr(model[0])
    assert model.encode(TEXTS).shape == (4, 32)  # encoding does not move it either


def test_placement_arguments_that_conflict_fail_before_loading(folder: Path) -> None:
    with pytest.raises(ValueError, match="Pass device or a device_map / quantization_config, not both"):
        echo_embeddings.load(str(folder), device="cpu", device_map="auto")
    with pytest.raises(ValueError, match="quantize='int8' and a quantization_config both quantize"):
        echo_embeddings.load(str(folder), quantize="int8", quantization_config=FakeQuantization())
    with pytest.raises(ValueError, match=r"not in model_kwargs\['torch_dtype'\]"):
        echo_embeddings.load(str(folder), model_kwargs={"torch_dtype": "float32"})


def offloaded_map(layers: int) -> dict[str, str]:
    """Embeddings and norm on the CPU, every other decoder layer offloaded to disk."""
    placed = {f"layers.{i}": "disk" if i % 2 else "cpu" for i in range(layers)}
    return {"embed_tokens": "cpu", **placed, "norm": "cpu", "rotary_emb": "cpu"}


@pytest.mark.parametrize(
    "options",
    [
        {"strategy": "echo"},
        {"strategy": "prompteol+tp", "tp_layers": (1, 3)},
        {"strategy": "echo", "output_layer": 2},
    ],
    ids=["echo", "token-prepending", "early-exit"],
)
def test_a_sharded_model_gives_the_unsharded_vectors(folder: Path, tmp_path: Path, options: dict[str, Any]) -> None:
    whole = echo_embeddings.load(str(folder), device="cpu", dtype="float32", **options)
    sharded = echo_embeddings.load(
        str(folder), dtype="float32", device_map=offloaded_map(4), model_kwargs={"offload_folder": str(tmp_path)}, **options
    )
    assert any(p.device.type == "meta" for p in sharded[0].model.parameters())  # really offloaded
    assert sharded[0].engine.device == torch.device("cpu")
    assert sharded[0].engine.fast_paths["prefix_cache"] == "on"
    assert sharded[0].engine.fast_paths["packing"] == "grouped-sdpa"
    expected = whole.encode(TEXTS)
    assert np.abs(sharded.encode(TEXTS) - expected).max() <= 1e-5
    assert np.abs(sharded.encode_query(TEXTS) - whole.encode_query(TEXTS)).max() <= 1e-5
    sharded[0].prefix_cache, sharded[0].packing = False, False
    assert np.abs(sharded.encode(TEXTS) - expected).max() <= 1e-5
