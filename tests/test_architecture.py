"""The package's shape: import graph, settings declared once, no side effects at import, and models
saved by earlier releases loading with the same vectors."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import echo_embeddings
from echo_embeddings import EchoEmbedder, EmbedderSettings, Engine

ROOT = Path(__file__).resolve().parent.parent
SAVED_0_2_0 = Path(__file__).parent / "data" / "saved_0_2_0"


def test_no_import_cycle_no_upward_import_and_a_pure_engine() -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import check_imports
    finally:
        sys.path.pop(0)
    assert check_imports.check() == []


def test_the_import_check_finds_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import check_imports
    finally:
        sys.path.pop(0)
    package = tmp_path / "echo_embeddings"
    (package / "engine").mkdir(parents=True)
    (package / "__init__.py").write_text("from .a import x\n")
    (package / "a.py").write_text("from . import b\nx = 1\n")
    (package / "b.py").write_text("from .a import x\nimport echo_embeddings\n")
    (package / "engine" / "__init__.py").write_text("")
    (package / "engine" / "core.py").write_text("import sentence_transformers\nfrom ..a import x\n")
    problems = check_imports.check(tmp_path)
    assert any(p.startswith("import cycle:") and "echo_embeddings.a" in p and "echo_embeddings.b" in p for p in problems)
    assert "upward import: echo_embeddings.b imports echo_embeddings, a package that contains it" in problems
    assert any(p.startswith("the engine reaches outside it: echo_embeddings.engine.core") for p in problems)


def test_importing_the_package_registers_nothing_globally() -> None:
    code = (
        "import torch.optim.optimizer as o\n"
        "from transformers import AttentionInterface\n"
        "import echo_embeddings, echo_embeddings.cli, echo_embeddings.training, echo_embeddings.evaluation\n"
        "import echo_embeddings.adapter_cache, echo_embeddings.scale_out, echo_embeddings.sentence_transformer\n"
        "print(len(o._global_optimizer_post_hooks), 'echo_packed' in AttentionInterface._global_mapping)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "False"]


def test_loading_a_model_registers_what_it_needs(make_model) -> None:
    from torch.optim import optimizer
    from transformers import AttentionInterface

    make_model("echo")
    assert "echo_packed" in AttentionInterface._global_mapping
    assert len(optimizer._global_optimizer_post_hooks) == 1
    make_model("echo")  # idempotent
    assert len(optimizer._global_optimizer_post_hooks) == 1


def test_every_setting_is_declared_once_and_saved(make_model, tmp_path: Path) -> None:
    names = [f.name for f in dataclasses.fields(EmbedderSettings)]
    assert EchoEmbedder.config_keys == names
    model = make_model("echo")
    module = model[0]
    for name in names:  # the module, the engine and the settings agree on every field
        assert getattr(module, name) == getattr(module.engine, name) == module.engine.resolved(name)
    module.prefix_cache = False
    module.packing = False
    module.padding_side = "left"
    assert module.engine.fast_paths["packing"] == "off: turned off (packing=False)"
    model.save(str(tmp_path / "saved"))
    config = json.loads((tmp_path / "saved" / "echo_embeddings_config.json").read_text())
    assert {k: config[k] for k in ("prefix_cache", "packing", "padding_side")} == {"prefix_cache": False, "packing": False, "padding_side": "left"}
    assert set(config) == set(names) | {"requires"}
    loaded = echo_embeddings.load(str(tmp_path / "saved"), device="cpu")
    assert (loaded[0].prefix_cache, loaded[0].packing, loaded[0].padding_side) == (False, False, "left")
    np.testing.assert_allclose(loaded.encode(["a text", "another one"]), model.encode(["a text", "another one"]), atol=1e-5)


def test_settings_are_validated_once_before_any_weights_load() -> None:
    with pytest.raises(ValueError, match="padding_side must be 'left' or 'right'"):
        EchoEmbedder("no/such-model", padding_side="middle")
    with pytest.raises(TypeError, match="unexpected keyword argument 'outptu_layer'"):
        EmbedderSettings(outptu_layer=3)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match=r"config.json: unknown settings \['colour'\]"):
        EmbedderSettings.from_config({"colour": "blue"}, "config.json")


def test_a_setting_change_is_checked_against_the_model_and_applied_whole(make_model) -> None:
    engine: Engine = make_model("echo")[0].engine
    before = engine.settings
    with pytest.raises(ValueError, match="outside this model's hidden states"):
        engine.configure(output_layer=99, max_batch_tokens=64)
    assert engine.settings == before  # nothing half-applied


def test_a_model_saved_by_0_2_0_loads_with_identical_vectors(tmp_path: Path) -> None:
    folder = tmp_path / "saved"
    shutil.copytree(SAVED_0_2_0, folder)
    expected = np.load(folder / "expected_vectors.npz")
    texts = [str(t) for t in expected["texts"]]
    model = echo_embeddings.load(str(folder), device="cpu")
    assert [type(m).__name__ for m in model] == ["EchoEmbedder", "Whitening", "Normalize"]
    # 0.2.0 fitted this whitening on 18 texts of a tiny random model and kept three directions with
    # no variance, scaled by about 1e6: there the vectors are float noise, and it differs between
    # CPUs (their kernels round differently). Compare the five directions with variance, each
    # vector renormalised over them (what the unit vectors hold there, whatever the noise added).
    scales = np.linalg.norm(model[1].projection.detach().numpy(), axis=0)
    real = scales < 1e3 * scales.min()
    assert real.sum() == 5

    def informative(vectors: np.ndarray) -> np.ndarray:
        kept = vectors[:, real]
        return kept / np.linalg.norm(kept, axis=1, keepdims=True)

    for task, key in ((None, "sentence"), ("query", "query"), ("document", "document")):
        np.testing.assert_allclose(informative(model.encode(texts, task=task)), informative(expected[key]), atol=1e-5)


def test_an_unknown_task_is_an_error_not_the_symmetric_template(make_model) -> None:
    model = make_model("echo")
    with pytest.raises(ValueError, match="Unknown task 'querry'"):
        model.encode(["a text"], task="querry")
    np.testing.assert_allclose(model.encode(["a text"], task="passage"), model.encode(["a text"], task="document"))


def test_the_architecture_page_names_every_module() -> None:
    page = (ROOT / "docs" / "concepts" / "architecture.md").read_text(encoding="utf-8")
    package = ROOT / "src" / "echo_embeddings"
    missing = [str(p.relative_to(package)) for p in sorted(package.rglob("*.py")) if p.name != "__init__.py" and f" {p.name}" not in page]
    assert missing == []
    for folder in sorted(p for p in package.iterdir() if p.is_dir() and not p.name.startswith("__")):
        assert f" {folder.name}/" in page
