"""Precision: what ``dtype="auto"`` picks on which CPU, bf16 against fp32, int8 weights composed
with every fast path, and none of it written into a save."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import save_tiny_model

import echo_embeddings
from echo_embeddings.engine import precision

TEXTS = ["A man is playing a guitar.", "Dogs run in the park; cats sleep on the sofa.", "", "Über café naïve 🎸"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "decoder")


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512vl\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\nprocessor\t: 1\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"


def test_native_bf16_is_read_from_the_cpu_flags() -> None:
    assert precision.native_bf16_in(SAPPHIRE_RAPIDS)
    assert not precision.native_bf16_in(SKYLAKE)
    assert not precision.native_bf16_in("")  # nothing known: fp32
    assert not precision.native_bf16_in(SAPPHIRE_RAPIDS + SKYLAKE.replace("0", "2"))  # every core must have it


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_picks_bf16_only_on_cpus_with_native_bf16(folder: Path, monkeypatch: pytest.MonkeyPatch, native: bool, expected: torch.dtype) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    monkeypatch.delenv(precision.DTYPE_VARIABLE, raising=False)
    assert precision.resolve_dtype(None, torch.device("cpu"))[0] == expected
    assert precision.resolve_dtype("auto", torch.device("cpu"))[0] == expected
    model = echo_embeddings.load(str(folder), device="cpu")
    assert next(model[0].model.parameters()).dtype == expected
    name = str(expected).removeprefix("torch.")
    assert model[0].engine.fast_paths["precision"] == name
    shown = repr(model[0])
    assert f"'loaded_as': '{name} (auto: this CPU " in shown
    assert ("has native bf16" in shown) == native
    # An explicit dtype wins over auto either way.
    assert next(echo_embeddings.load(str(folder), device="cpu", dtype="float32")[0].model.parameters()).dtype == torch.float32


def test_the_environment_sets_what_auto_means(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(precision.DTYPE_VARIABLE, "bf16")
    assert precision.resolve_dtype("auto", torch.device("cpu")) == (torch.bfloat16, "auto: ECHO_EMBEDDINGS_DTYPE=bf16")
    assert precision.resolve_dtype("float32", torch.device("cpu"))[0] == torch.float32  # an explicit dtype still wins


def test_dtype_names_and_bad_values() -> None:
    assert precision.as_dtype("bf16") is torch.bfloat16
    assert precision.as_dtype("torch.float32") is torch.float32
    assert precision.as_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="dtype 'int8': expected 'auto', 'float32', 'bfloat16'"):
        precision.as_dtype("int8")
    with pytest.raises(ValueError, match="quantize='int4': expected one of int8"):
        precision.check_quantization("int4")


def test_bf16_vectors_agree_with_fp32(folder: Path) -> None:
    """On a random tiny decoder (no trained structure to lean on) bf16 keeps cosine >= 0.99 to
    fp32; the real models keep >= 0.9999 (docs/generated/cpu_precision.md)."""
    fp32 = echo_embeddings.load(str(folder), device="cpu", dtype="float32").encode(TEXTS)
    bf16 = echo_embeddings.load(str(folder), device="cpu", dtype="bfloat16").encode(TEXTS)
    assert bf16.dtype == np.float32  # pooled in fp32 whatever the decoder's dtype
    assert cosine(fp32, bf16).min() >= 0.99


def fast_and_plain(model: echo_embeddings.EchoSentenceTransformer) -> tuple[np.ndarray, np.ndarray]:
    fast = model.encode(TEXTS)
    model[0].prefix_cache, model[0].packing = False, False
    plain = model.encode(TEXTS)
    model[0].prefix_cache, model[0].packing = True, None
    return fast, plain


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_int8_weights_compose_with_the_prefix_cache_packing_token_prepending_and_early_exit(folder: Path, dtype: str) -> None:
    pytest.importorskip("torchao")
    options = {"strategy": "prompteol+tp", "tp_layers": (1, 3), "output_layer": 3}
    reference = echo_embeddings.load(str(folder), device="cpu", dtype=dtype, **options).encode(TEXTS)
    model = echo_embeddings.load(str(folder), device="cpu", dtype=dtype, quantize="int8", **options)
    assert model[0].engine.fast_paths == {"prefix_cache": "on", "packing": "grouped-sdpa", "precision": f"{dtype}, int8 weights"}
    assert type(model[0].model.layers[0].mlp.up_proj.weight).__name__ != "Parameter"  # really quantized
    assert model[0].model.embed_tokens.weight.dtype == getattr(torch, dtype)  # embeddings are not linear layers
    fast, plain = fast_and_plain(model)
    assert np.abs(fast - plain).max() <= (1e-4 if dtype == "float32" else 2e-2) * np.abs(plain).max()
    assert cosine(fast, reference).min() >= 0.99


def test_an_int8_model_is_for_inference_and_saves_only_by_reference(folder: Path, tmp_path: Path) -> None:
    pytest.importorskip("torchao")
    model = echo_embeddings.load(str(folder), device="cpu", quantize="int8")
    with pytest.raises(ValueError, match="int8-quantized decoder .* is for inference"):
        echo_embeddings.add_lora(model)
    with pytest.raises(ValueError, match="int8-quantized, a choice of this machine that a save does not keep"):
        model.save(str(tmp_path / "saved"))


def test_a_saved_model_keeps_no_machine_choice(folder: Path, tmp_path: Path) -> None:
    """A model loaded in bf16 with a device map saves its settings and the weights that ran; it
    reloads in whatever precision its new loader asks for, with no device map."""
    model = echo_embeddings.load(str(folder), device_map={"": "cpu"}, dtype="bfloat16")
    assert model[0].placement is not None and model[0].placement.delegated
    model.save(str(tmp_path / "saved"))
    written = (tmp_path / "saved").rglob("*.json")
    text = " ".join(p.read_text() for p in written if p.name != "tokenizer.json")
    for choice in ("device_map", "quantiz", "offload", "loaded_as"):
        assert choice not in text
    config = json.loads((tmp_path / "saved" / "echo_embeddings_config.json").read_text())
    assert "dtype" not in config
    reloaded = echo_embeddings.load(str(tmp_path / "saved"), device="cpu", dtype="float32")
    assert next(reloaded[0].model.parameters()).dtype == torch.float32
    assert not reloaded[0].placement.delegated
    assert cosine(reloaded.encode(TEXTS), model.encode(TEXTS)).min() >= 0.99


def test_the_train_command_keeps_fp32_on_the_cpu_and_auto_on_gpus() -> None:
    from echo_embeddings.cli.train import training_dtype

    assert training_dtype("cpu") == "float32"
    assert training_dtype("cuda:1") == "auto"
    assert training_dtype(None) == ("auto" if torch.cuda.is_available() else "float32")


def test_modules_after_a_bf16_decoder_run(tmp_path: Path) -> None:
    """sentence-transformers casts the modules after the decoder to its dtype: a Dense then takes
    the pooled vectors in bf16 (it failed on fp32 ones before), a whitening keeps fp32 statistics."""
    from helpers import save_dense_model

    folder = save_dense_model(tmp_path)
    fp32 = echo_embeddings.load(str(folder), device="cpu", dtype="float32").encode(TEXTS)
    bf16 = echo_embeddings.load(str(folder), device="cpu", dtype="bfloat16")
    assert next(bf16[1].parameters()).dtype == torch.bfloat16
    assert cosine(bf16.encode(TEXTS), fp32).min() >= 0.99
    whitened = echo_embeddings.load(str(tmp_path / "decoder"), device="cpu", dtype="bfloat16")
    echo_embeddings.fit_whitening(whitened, [f"text number {i} about {t}" for i, t in enumerate(TEXTS * 10)], dim=8)
    assert {b.dtype for b in whitened[1].buffers()} == {torch.float32}
    assert whitened.encode(TEXTS).shape == (4, 8)
