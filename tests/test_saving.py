"""Saving and loading by every name a model goes by: a hub id resolved offline through a local
cache (built here, in the layout huggingface_hub writes), and saves that name an unchanged base
instead of copying its weights."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import save_tiny_model

import echo_embeddings
from echo_embeddings import fit_whitening

TEXTS = ["A man is playing a guitar.", "Dogs run in the park.", "Stocks fell sharply.", "The weather is lovely today."]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, Callable[[Path], object]], Path]:
    """``hub(repo_id, write)`` puts what ``write(folder)`` writes into an offline hub cache as that
    repository's main revision, as ``push_to_hub`` and a later download would leave it."""
    from huggingface_hub import constants

    cache = tmp_path / "hub-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def publish(repo_id: str, write: Callable[[Path], object]) -> Path:
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        snapshot = repo / "snapshots" / COMMIT
        write(snapshot)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(COMMIT)
        return snapshot

    return publish


def test_a_saved_model_loads_by_hub_id_with_all_it_was(tmp_path: Path, hub) -> None:
    model = echo_embeddings.load(str(save_tiny_model(tmp_path / "base")), "prompteol", device="cpu", output_layer=-2)
    fit_whitening(model, [f"{t} {i}" for i in range(10) for t in TEXTS], dim=8)
    expected = model.encode(TEXTS)
    snapshot = hub("tester/echo-tiny", lambda folder: model.save(str(folder)))
    assert echo_embeddings.is_saved_model("tester/echo-tiny") and echo_embeddings.is_saved_model(snapshot)
    for name in ("tester/echo-tiny", str(snapshot)):
        again = echo_embeddings.load(name, device="cpu")
        assert again[0].strategy == "prompteol" and again[0].output_layer == -2 and type(again[-1]).__name__ == "Whitening"
        assert np.abs(again.encode(TEXTS) - expected).max() < 1e-5
    assert not echo_embeddings.is_saved_model("tester/not-cached")


def test_an_unchanged_base_is_named_not_copied(tmp_path: Path, hub) -> None:
    hub("tester/tiny-decoder", lambda folder: save_tiny_model(folder))
    assert not echo_embeddings.is_saved_model("tester/tiny-decoder")  # a bare decoder
    model = echo_embeddings.load("tester/tiny-decoder", "echo", device="cpu")
    expected = model.encode(TEXTS)
    model.save(str(tmp_path / "light"))
    config = json.loads((tmp_path / "light" / "echo_embeddings_config.json").read_text())
    assert config["base_model"] == "tester/tiny-decoder" and "lora" not in config
    assert not list((tmp_path / "light").glob("*.safetensors"))
    assert "not copied into this folder" in (tmp_path / "light" / "README.md").read_text()
    assert np.abs(echo_embeddings.load(str(tmp_path / "light"), device="cpu").encode(TEXTS) - expected).max() < 1e-6

    model.save(str(tmp_path / "full"), self_contained=True)
    assert (tmp_path / "full" / "model.safetensors").is_file()
    assert "base_model" not in json.loads((tmp_path / "full" / "echo_embeddings_config.json").read_text())
    assert np.abs(echo_embeddings.load(str(tmp_path / "full"), device="cpu").encode(TEXTS) - expected).max() < 1e-6

    with __import__("torch").no_grad():
        model[0].model.layers[0].mlp.down_proj.weight.mul_(1.5)  # trained, as far as a save can tell
    changed = model.encode(TEXTS)
    model.save(str(tmp_path / "changed"))
    assert (tmp_path / "changed" / "model.safetensors").is_file()
    assert np.abs(echo_embeddings.load(str(tmp_path / "changed"), device="cpu").encode(TEXTS) - changed).max() < 1e-6


def test_a_base_from_a_local_folder_is_copied(tmp_path: Path) -> None:
    model = echo_embeddings.load(str(save_tiny_model(tmp_path / "base")), "echo", device="cpu")
    model.save(str(tmp_path / "saved"))
    assert (tmp_path / "saved" / "model.safetensors").is_file()  # the folder may not exist where this one goes
