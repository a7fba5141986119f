"""Evaluation: metrics against hand-computed values, readers' errors, the CLI end to end with its cache."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from echo_embeddings import cli
from echo_embeddings import evaluation as ev
from helpers import save_tiny_model


def test_ranking_metrics_by_hand() -> None:
    ranking = ["d1", "d2", "d3"]
    relevance = {"d2": 1, "d3": 2}
    dcg = 1 / math.log2(3) + 2 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert ev.ndcg_at_k(ranking, relevance, 10) == pytest.approx(dcg / idcg)
    assert ev.ndcg_at_k(ranking, relevance, 1) == 0.0
    assert ev.ndcg_at_k(["d3", "d2"], relevance) == pytest.approx(1.0)
    assert ev.recall_at_k(ranking, relevance, 2) == 0.5
    assert ev.recall_at_k(ranking, relevance, 100) == 1.0
    assert ev.mrr_at_k(ranking, relevance, 10) == 0.5
    assert ev.mrr_at_k(ranking, relevance, 1) == 0.0
    assert ev.ndcg_at_k(ranking, {}, 10) == 0.0


def test_correlations_by_hand() -> None:
    # Ranks 1,2,3,4 against 1,2,4,3: sum of squared rank differences 2, so 1 - 6*2/(4*15) = 0.8.
    assert ev.spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)
    assert ev.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)


def test_sts_and_classification_with_a_fake_encoder() -> None:
    table = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [0.6, 0.8]}

    def encode(texts: list[str], task: str | None) -> np.ndarray:
        return np.array([table[t[0]] for t in texts], dtype=np.float32)

    scores = ev.evaluate_sts(encode, [["5", "a1", "a2"], ["0", "a3", "b1"], ["3", "a4", "c1"]])
    assert scores["spearman"] == pytest.approx(100.0)
    task = ev.Classification("toy", ["a1", "a2", "b1", "b2"], ["x", "x", "y", "y"], ["a9", "b9"], ["x", "y"])
    assert ev.evaluate_classification(encode, task, runs=2) == {"accuracy": 100.0, "f1": 100.0}


def test_retrieval_with_a_fake_encoder(tmp_path) -> None:
    folder = _beir(tmp_path)
    task = ev.read_retrieval(folder)

    def encode(texts: list[str], task_name: str | None) -> np.ndarray:
        return np.array([[1.0, 0.0] if "cat" in t else [0.0, 1.0] for t in texts], dtype=np.float32)

    scores = ev.evaluate_retrieval(encode, task)
    assert scores["recall@100"] == 100.0 and scores["mrr@10"] == 100.0


def test_chunked_retrieval_scores_a_document_by_its_best_chunk(tmp_path) -> None:
    task = ev.read_retrieval(_beir(tmp_path))

    def encode(texts: list[str], task_name: str | None) -> np.ndarray:
        return np.array([[1.0, 0.0] if "cat" in t else [0.0, 1.0] for t in texts], dtype=np.float32)

    def encode_chunks(documents: list[str]) -> list[np.ndarray]:
        # Document 1 has one chunk about cats among others; document 2 has none.
        return [np.array([[0.6, 0.8], [1.0, 0.0], [0.6, 0.8]]) if "cat" in d else np.array([[0.0, 1.0]]) for d in documents]

    scores = ev.evaluate_retrieval(encode, task, encode_chunks)
    assert scores["mrr@10"] == 100.0


def test_corpus_sample_keeps_every_judged_document(tmp_path) -> None:
    task = ev.read_retrieval(_beir(tmp_path))
    big = ev.Retrieval(task.name, {**task.corpus, **{f"x{i}": f"filler {i}" for i in range(20)}}, task.queries, task.qrels)
    sample = ev.sample_corpus(big, 7)
    assert len(sample.corpus) == 7 and {"1", "2"} <= set(sample.corpus)
    assert ev.sample_corpus(big, 7).corpus == sample.corpus  # seeded
    assert set(ev.sample_corpus(big, 1).corpus) == {"1", "2"}


def test_cli_chunked_retrieval(tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    model = str(save_tiny_model(tmp_path / "tiny"))
    argv = ["evaluate", "--model", model, "--strategy", "echo", "--retrieval", _beir(tmp_path), "--chunking", "late", "--chunk-tokens", "4", "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 0
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(report["results"]) == {f"{model}/echo/late-4"}
    monkeypatch.setattr("echo_embeddings.engine.Engine.forward", lambda *a: pytest.fail("recomputed cached chunk vectors"))
    assert cli.main(argv) == 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["results"] == report["results"]
    monkeypatch.undo()
    argv[argv.index("echo")] = "prompteol"
    assert cli.main(argv) == 2
    assert "--chunking late: Late chunking pools token spans" in capsys.readouterr().err


def _beir(tmp_path) -> str:
    folder = tmp_path / "toy-beir"
    (folder / "qrels").mkdir(parents=True)
    docs = [{"_id": "1", "title": "Cats", "text": "The cat sleeps."}, {"_id": "2", "title": "", "text": "Stocks fell today."}]
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs))
    queries = [{"_id": "q1", "text": "Where is the cat?"}, {"_id": "q2", "text": "What did the market do?"}]
    (folder / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\t1\t1\nq2\t2\t1\n")
    return str(folder)


def test_reader_errors_name_the_file_and_fix(tmp_path) -> None:
    with pytest.raises(ev.DataError, match="no such file"):
        ev.read_table(tmp_path / "missing.tsv", ["a"])
    (tmp_path / "pairs.tsv").write_text("score\tleft\tright\n1\ta\tb\n")
    with pytest.raises(ev.DataError, match=r"no column 'sentence1', 'sentence2'; the header has \['score', 'left', 'right'\]"):
        ev.read_table(tmp_path / "pairs.tsv", ["score", "sentence1", "sentence2"])
    (tmp_path / "empty.tsv").write_text("score\tsentence1\tsentence2\n")
    with pytest.raises(ev.DataError, match="no rows"):
        ev.read_table(tmp_path / "empty.tsv", ["score", "sentence1", "sentence2"])
    (tmp_path / "train.csv").write_text('text,label\n"a, b",x\nc,y\n')
    (tmp_path / "test.csv").write_text("text,label\nd,z\n")
    with pytest.raises(ev.DataError, match=r"labels \['z'\] appear in the test split but never in training"):
        ev.read_classification(str(tmp_path / "train.csv"), str(tmp_path / "test.csv"), ["text", "label"])
    with pytest.raises(ev.DataError, match="no task given"):
        cli.evaluate.run(cli.parser().parse_args(["evaluate", "--model", "x"]))


def test_cli_end_to_end_with_cache(tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    model = str(save_tiny_model(tmp_path / "tiny"))
    sts = tmp_path / "sts.tsv"
    sts.write_text("score\tsentence1\tsentence2\n5\tA cat sleeps.\tA cat is sleeping.\n0\tA cat sleeps.\tStocks fell.\n3\tDogs run.\tDogs are running fast.\n")
    cls = tmp_path / "intents.csv"
    cls.write_text("text,label\n" + "\n".join(f"{w} number {i},{w}" for i in range(10) for w in ("card", "loan")))
    argv = ["evaluate", "--model", model, "--strategy", "mean,echo", "--sts", str(sts), "--classification", str(cls), "--retrieval", _beir(tmp_path), "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 0
    table = capsys.readouterr().out
    assert "sts:sts (spearman)" in table and "average" in table and f"{model}/echo" in table
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(report["results"]) == {f"{model}/mean", f"{model}/echo"}
    assert set(report["results"][f"{model}/echo"]) == {"sts:sts", "classification:intents", "retrieval:toy-beir"}
    assert (tmp_path / "out" / "results.png").read_bytes()[:4] == b"\x89PNG"

    # A second run reads every vector from the cache: the model never runs.
    monkeypatch.setattr("echo_embeddings.engine.Engine.forward", lambda *a: pytest.fail("recomputed a cached embedding"))
    assert cli.main(argv) == 0
    again = json.loads((tmp_path / "out" / "results.json").read_text())
    assert again["results"] == report["results"]


def test_cli_reports_bad_files(tmp_path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["evaluate", "--model", "x", "--sts", str(tmp_path / "nope.tsv")]) == 2
    assert "nope.tsv: no such file" in capsys.readouterr().err


def test_missing_extras_fail_first(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert cli.main(["evaluate", "--model", "x", "--sts", "whatever.tsv"]) == 2
    assert "pip install 'echo-embeddings[eval]'" in capsys.readouterr().err


def test_classification_survives_anisotropic_embeddings() -> None:
    # Decoder embeddings share one dominant direction; the class signal is a small residual.
    rng = np.random.default_rng(0)
    direction = rng.normal(size=64)

    def encode(texts: list[str], task: str | None) -> np.ndarray:
        signal = np.array([[1.0 if t.startswith("x") else -1.0] + [0.0] * 63 for t in texts])
        vectors = 50 * direction + 0.5 * signal + 0.1 * rng.normal(size=(len(texts), 64))
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    train = [f"{c}{i}" for i in range(30) for c in "xyy"]
    test = [f"{c}t{i}" for i in range(10) for c in "xyy"]
    task = ev.Classification("aniso", train, [t[0] for t in train], test, [t[0] for t in test])
    assert ev.evaluate_classification(encode, task, runs=1)["accuracy"] >= 90
