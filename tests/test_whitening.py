"""Whitening: streaming statistics, the fitted transform, save/load, every surface, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

import echo_embeddings
from echo_embeddings import Whitening, fit_whitening
from echo_embeddings.models.whitening import CovarianceAccumulator
from helpers import save_dense_model, save_tiny_model

CORPUS = [f"Document {i}: {'dogs run in the park' if i % 3 else 'the market fell'} and {'cats sleep' if i % 2 else 'birds sing'} {i % 7}." for i in range(120)]
TEXTS = ["A man is playing a guitar.", "", "The market fell today."]


@pytest.fixture
def model(tmp_path):
    return echo_embeddings.load(str(save_tiny_model(tmp_path / "tiny")), "echo", device="cpu")


def test_streamed_statistics_equal_numpy() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6)) + 3
    stats = CovarianceAccumulator(6)
    for chunk in np.array_split(data, 7):
        stats.update(chunk)
    assert stats.count == 500
    assert np.allclose(stats.mean, data.mean(axis=0)) and np.allclose(stats.covariance, np.cov(data, rowvar=False))


def test_whitened_corpus_has_identity_covariance(model) -> None:
    raw = model.encode_document(CORPUS)
    fit_whitening(model, iter(CORPUS), dim=16, chunk_size=25, task="document")
    assert isinstance(model[-1], Whitening) and model.get_embedding_dimension() == 16 and model[-1].fitted_on == 120
    white = model.encode_document(CORPUS)
    assert white.shape == (120, 16)
    assert np.allclose(white.mean(axis=0), 0, atol=1e-3)
    assert np.allclose(np.cov(white, rowvar=False), np.eye(16), atol=1e-2)
    # the same transform for queries: (x - mean) @ projection on the raw query vectors
    query = model.encode_query(["dogs?"])
    module = model[-1]
    raw_query = echo_embeddings.EchoSentenceTransformer(modules=[model[0]], device="cpu").encode_query(["dogs?"])
    assert np.allclose(query, (raw_query - module.mean.numpy()) @ module.projection.numpy(), atol=1e-4)
    assert not np.allclose(raw[:, :16], white, atol=1e-2)


def test_centering_only(model) -> None:
    raw = model.encode_document(CORPUS)
    fit_whitening(model, CORPUS, kind="center", task="document")
    assert np.allclose(model.encode_document(CORPUS), raw - raw.mean(axis=0), atol=1e-4)


def test_default_fit_uses_the_template_encode_uses(model) -> None:
    """Whitening serves symmetric similarity: by default it is fitted on what ``encode`` gives."""
    raw = model.encode(CORPUS)
    assert not np.allclose(raw, model.encode_document(CORPUS), atol=1e-3)  # echo: another template
    fit_whitening(model, CORPUS, kind="center")
    assert np.allclose(model.encode(CORPUS), raw - raw.mean(axis=0), atol=1e-4)


def test_saved_with_the_model_and_applied_by_every_surface(model, tmp_path) -> None:
    from echo_embeddings import OutputFormat
    from echo_embeddings.adapter_cache import shared_model

    fit_whitening(model, CORPUS, dim=8)
    expected = model.encode(TEXTS)
    model.save(str(tmp_path / "white"))
    assert (tmp_path / "white" / "1_Whitening" / "model.safetensors").is_file()
    again = echo_embeddings.load(str(tmp_path / "white"), device="cpu")
    assert isinstance(again[-1], Whitening) and again[-1].kind == "pca"
    assert np.allclose(again.encode(TEXTS), expected, atol=1e-5)
    assert np.allclose(np.concatenate(list(again.stream(TEXTS, chunk_size=2))), expected, atol=1e-5)
    adapters = shared_model(str(tmp_path / "white"), device="cpu")
    assert np.allclose(adapters.encode(TEXTS, "query", output=OutputFormat()), again.encode_query(TEXTS), atol=1e-5)


def test_refit_replaces_and_works_after_other_modules(tmp_path) -> None:
    model = echo_embeddings.load(str(save_dense_model(tmp_path)), device="cpu")  # echo, Dense 32 -> 8, Normalize
    fit_whitening(model, CORPUS, dim=4)
    fit_whitening(model, CORPUS[:60], dim=6)
    assert [type(m).__name__ for m in model] == ["EchoEmbedder", "Dense", "Normalize", "Whitening"]
    assert model.encode(TEXTS).shape == (3, 6) and model[-1].fitted_on == 60 and model[-1].in_features == 8


def test_too_few_texts_fail_or_warn_clearly(model) -> None:
    with pytest.raises(ValueError, match="needs more than 16 texts; got 10"):
        fit_whitening(model, CORPUS[:10], dim=16)
    with pytest.warns(UserWarning, match="Fitted on 20 texts for 32-dimensional embeddings"):
        fit_whitening(model, CORPUS[:20], dim=8)
    with pytest.raises(ValueError, match="got no texts"):
        fit_whitening(model, [])
    with pytest.raises(ValueError, match="dim must be between 1 and the embedding dimension 32"):
        fit_whitening(model, CORPUS, dim=64)


def test_cli_fit_whitening(tmp_path) -> None:
    from echo_embeddings import cli

    folder = save_tiny_model(tmp_path / "tiny")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n\n", encoding="utf-8")
    assert cli.main(["fit-whitening", str(corpus), "--model", str(folder), "--dim", "12", "--out", str(tmp_path / "w")]) == 0
    saved = echo_embeddings.load(str(tmp_path / "w"), device="cpu")
    assert saved.get_embedding_dimension() == 12 and saved[-1].fitted_on == 120  # the blank line is not a text
    manual = fit_whitening(echo_embeddings.load(str(folder), "echo", device="cpu"), CORPUS, dim=12)
    assert np.allclose(saved.encode(TEXTS), manual.encode(TEXTS), atol=1e-4)
    assert cli.main(["fit-whitening", str(tmp_path / "none.txt"), "--model", str(folder), "--out", str(tmp_path / "x")]) == 2
    assert cli.main(["fit-whitening", str(corpus), "--model", str(folder), "--dim", "500", "--out", str(tmp_path / "x")]) == 2
