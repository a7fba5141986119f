"""MTEB runs the model from echo_embeddings.load on tasks built from local data (no download)."""

from __future__ import annotations

import mteb
import numpy as np
import pytest
from datasets import Dataset, DatasetDict

import echo_embeddings
from echo_embeddings import evaluation as ev
from helpers import save_tiny_model

PAIRS = [("A cat sleeps.", "A cat is sleeping.", 5.0), ("Dogs run.", "Dogs are running.", 4.5), ("Stocks fell.", "The cat naps.", 0.0), ("It rains.", "Rain is falling.", 4.0)]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    return echo_embeddings.load(str(save_tiny_model(tmp_path_factory.mktemp("tiny") / "m")), "echo", device="cpu")


def test_sts_task_matches_our_own_scoring(model) -> None:
    task = mteb.get_task("STSBenchmark")
    columns = {"sentence1": [a for a, _, _ in PAIRS], "sentence2": [b for _, b, _ in PAIRS], "score": [s for *_, s in PAIRS]}
    task.dataset = {"default": DatasetDict({"test": Dataset.from_dict(columns)})}
    task.data_loaded = True
    scores = mteb.evaluate(model, task, cache=None, show_progress_bar=False).task_results[0].scores["test"][0]

    def encode(texts: list[str], task_name: str | None) -> np.ndarray:
        return model.encode(texts, normalize_embeddings=True)

    ours = ev.evaluate_sts(encode, [[str(s), a, b] for a, b, s in PAIRS])
    assert scores["cosine_spearman"] * 100 == pytest.approx(ours["spearman"], abs=1e-6)


def test_retrieval_task_uses_query_and_document_templates(model, monkeypatch: pytest.MonkeyPatch) -> None:
    task = mteb.get_task("SciFact")
    corpus = Dataset.from_dict({"id": ["d1", "d2"], "title": ["Cats", ""], "text": ["The cat sleeps.", "Stocks fell today."]})
    queries = Dataset.from_dict({"id": ["q1", "q2"], "text": ["Where is the cat?", "What did stocks do?"]})
    task.dataset = {"default": {"test": {"corpus": corpus, "queries": queries, "relevant_docs": {"q1": {"d1": 1}, "q2": {"d2": 1}}, "top_ranked": None}}}
    task.data_loaded = True
    calls: list[str] = []
    for name in ("encode_query", "encode_document"):
        original = getattr(model, name)
        monkeypatch.setattr(model, name, lambda *a, _o=original, _n=name, **k: (calls.append(_n), _o(*a, **k))[1])
    result = mteb.evaluate(model, task, cache=None, show_progress_bar=False).task_results[0]
    assert {"encode_query", "encode_document"} <= set(calls)
    assert 0 <= result.scores["test"][0]["main_score"] <= 1
