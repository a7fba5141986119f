"""Evaluation on local data: STS, BEIR-style retrieval and classification, with an on-disk embedding cache.

Metrics follow MTEB's conventions: Spearman x 100 of cosine similarity for STS; nDCG@10 with
linear gains, Recall@100 and MRR@10 for retrieval (exact cosine search); a logistic regression
on the standardized embeddings for classification (fixed seeds, a capped training sample per run).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Encode = Callable[[list[str], "str | None"], np.ndarray]
"""``encode(texts, task)`` -> unit-length vectors; task is None, "query" or "document"."""
EncodeChunks = Callable[[list[str]], "list[np.ndarray]"]
"""``encode_chunks(documents)`` -> per document, its chunks' unit-length vectors ``[chunks, dim]``."""


class DataError(ValueError):
    """A task file that is missing, malformed or empty; the message names the file and the fix."""


# ---------------------------------------------------------------------------- metrics


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy.stats import pearsonr

    return float(pearsonr(x, y).statistic)


def ndcg_at_k(ranking: Sequence[str], relevance: dict[str, int], k: int = 10) -> float:
    """nDCG@k with linear gains (trec_eval's and so BEIR's/MTEB's convention)."""
    dcg = sum(relevance.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranking[:k]))
    ideal = sorted((r for r in relevance.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(rank + 2) for rank, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranking: Sequence[str], relevance: dict[str, int], k: int = 100) -> float:
    relevant = {doc for doc, r in relevance.items() if r > 0}
    return len(relevant & set(ranking[:k])) / len(relevant) if relevant else 0.0


def mrr_at_k(ranking: Sequence[str], relevance: dict[str, int], k: int = 10) -> float:
    for rank, doc in enumerate(ranking[:k]):
        if relevance.get(doc, 0) > 0:
            return 1.0 / (rank + 1)
    return 0.0


# ---------------------------------------------------------------------------- reading data


def read_table(path: str | Path, columns: Sequence[str]) -> list[list[str]]:
    """Rows of the named columns from a TSV (no quoting) or CSV file with a header line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with path.open(encoding="utf-8", newline="") as f:
        if path.suffix.lower() == ".csv":
            reader = csv.reader(f)
        else:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: the file is empty")
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataError(f"{path}: no column {', '.join(map(repr, missing))}; the header has {header}")
        index = [header.index(c) for c in columns]
        rows = [[row[i] for i in index] for row in reader if row]
    if not rows:
        raise DataError(f"{path}: no rows after the header")
    return rows


@dataclass
class Classification:
    name: str
    train_texts: list[str]
    train_labels: list[str]
    test_texts: list[str]
    test_labels: list[str]


def read_classification(train: str, test: str | None, columns: Sequence[str], test_fraction: float = 0.2) -> Classification:
    """Train and test files, or one file split (stratified, seed 0) when ``test`` is None."""
    rows = read_table(train, columns)
    if test is None:
        from sklearn.model_selection import train_test_split

        labels = [r[1] for r in rows]
        counts = {label: labels.count(label) for label in set(labels)}
        stratify = labels if min(counts.values()) >= 2 else None
        train_rows, test_rows = train_test_split(rows, test_size=test_fraction, random_state=0, stratify=stratify)
    else:
        train_rows, test_rows = rows, read_table(test, columns)
    unseen = sorted({r[1] for r in test_rows} - {r[1] for r in train_rows})
    if unseen:
        raise DataError(f"{test or train}: labels {unseen[:5]} appear in the test split but never in training")
    return Classification(
        Path(train).stem, [r[0] for r in train_rows], [r[1] for r in train_rows], [r[0] for r in test_rows], [r[1] for r in test_rows]
    )


@dataclass
class Retrieval:
    name: str
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"{path}: no such file (a BEIR folder has corpus.jsonl, queries.jsonl and qrels/test.tsv)")
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_retrieval(folder: str | Path, split: str = "test") -> Retrieval:
    folder = Path(folder)
    corpus = {str(d["_id"]): " ".join(p for p in (d.get("title", ""), d.get("text", "")) if p) for d in _jsonl(folder / "corpus.jsonl")}
    queries = {str(q["_id"]): q["text"] for q in _jsonl(folder / "queries.jsonl")}
    qrels: dict[str, dict[str, int]] = {}
    for query_id, doc_id, score in read_table(folder / "qrels" / f"{split}.tsv", ["query-id", "corpus-id", "score"]):
        qrels.setdefault(query_id, {})[doc_id] = int(score)
    qrels = {q: r for q, r in qrels.items() if q in queries}
    if not corpus or not qrels:
        raise DataError(f"{folder}: the corpus or the judged queries are empty")
    return Retrieval(folder.name, corpus, {q: queries[q] for q in qrels}, qrels)


def sample_corpus(task: Retrieval, size: int, seed: int = 0) -> Retrieval:
    """The task over at most ``size`` documents: every judged document of its queries, then
    others drawn at random (``seed``), in corpus order. Shows how a method ranks among
    distractors at a fraction of the cost of the full corpus."""
    judged = {doc for relevance in task.qrels.values() for doc in relevance if doc in task.corpus}
    others = sorted(set(task.corpus) - judged)
    rng = np.random.default_rng(seed)
    extra = max(size - len(judged), 0)
    keep = judged | set(rng.permutation(others)[:extra].tolist()) if others else judged
    return Retrieval(task.name, {d: t for d, t in task.corpus.items() if d in keep}, task.queries, task.qrels)


# ---------------------------------------------------------------------------- running tasks


def evaluate_sts(encode: Encode, pairs: list[list[str]]) -> dict[str, float]:
    """``pairs`` rows are (score, sentence1, sentence2)."""
    gold = [float(r[0]) for r in pairs]
    a = encode([r[1] for r in pairs], None)
    b = encode([r[2] for r in pairs], None)
    cosine = (a * b).sum(axis=1)
    return {"spearman": 100 * spearman(cosine, gold), "pearson": 100 * pearson(cosine, gold)}


def evaluate_retrieval(encode: Encode, task: Retrieval, encode_chunks: EncodeChunks | None = None) -> dict[str, float]:
    """Exact cosine search; with ``encode_chunks`` a document scores as its best chunk (as the
    late-chunking paper does), so chunked and whole-document runs rank the same documents."""
    doc_ids = list(task.corpus)
    query_ids = list(task.queries)
    queries = encode([task.queries[q] for q in query_ids], "query")
    if encode_chunks is None:
        scores = queries @ encode([task.corpus[d] for d in doc_ids], "document").T
    else:
        chunks = encode_chunks([task.corpus[d] for d in doc_ids])
        ends = np.cumsum([len(c) for c in chunks])
        similarity = queries @ np.concatenate(chunks).T
        scores = np.maximum.reduceat(similarity, np.r_[0, ends[:-1]], axis=1)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :100]
    rankings = {q: [doc_ids[j] for j in top[i]] for i, q in enumerate(query_ids)}
    per_query = [(ndcg_at_k(rankings[q], task.qrels[q]), recall_at_k(rankings[q], task.qrels[q]), mrr_at_k(rankings[q], task.qrels[q])) for q in query_ids]
    ndcg, recall, mrr = (100 * float(np.mean(v)) for v in zip(*per_query))
    return {"ndcg@10": ndcg, "recall@100": recall, "mrr@10": mrr}


def evaluate_classification(encode: Encode, task: Classification, runs: int = 3, max_train: int = 2000) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train = encode(task.train_texts, None)
    test = encode(task.test_texts, None)
    labels = np.array(task.train_labels)
    accuracy, f1 = [], []
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        pick = rng.permutation(len(labels))[:max_train]
        # Standardized features: decoder embeddings are anisotropic (unrelated texts have cosine
        # 0.7-0.9), and a regularized classifier on raw unit vectors predicts the majority class.
        classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
        classifier.fit(train[pick], labels[pick])
        predicted = classifier.predict(test)
        accuracy.append(accuracy_score(task.test_labels, predicted))
        f1.append(f1_score(task.test_labels, predicted, average="macro"))
    return {"accuracy": 100 * float(np.mean(accuracy)), "f1": 100 * float(np.mean(f1))}


# ---------------------------------------------------------------------------- embedding cache


class EmbeddingCache:
    """Vectors on disk keyed by (configuration, text), so re-runs and new metrics cost nothing."""

    def __init__(self, path: str | Path, config: dict) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path))
        self.db.execute("CREATE TABLE IF NOT EXISTS vectors (config TEXT, text TEXT, vector BLOB, PRIMARY KEY (config, text))")
        self.config = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()

    def _cached(self, tag: str, texts: list[str], compute: Callable[[list[str]], Sequence[np.ndarray]]) -> list[np.ndarray]:
        """Arrays for ``texts`` under ``tag``: read from disk, and the missing ones computed (in
        text order, each distinct text once) and stored. Vectors are stored as raw float32
        bytes; chunk matrices (tag ``chunks``) in ``.npy`` format, which keeps their shape."""
        matrix = tag == "chunks"
        keys = [hashlib.sha256(f"{tag}\0{t}".encode()).hexdigest() for t in texts]
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(f"SELECT text, vector FROM vectors WHERE config = ? AND text IN ({marks})", [self.config, *chunk])
            found.update((k, _decode(v, matrix)) for k, v in rows)
        missing = sorted({k: t for k, t in zip(keys, texts) if k not in found}.items())
        if missing:
            arrays = [np.asarray(a, dtype=np.float32) for a in compute([t for _, t in missing])]
            self.db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)", [(self.config, k, _encode(a, matrix)) for (k, _), a in zip(missing, arrays)])
            self.db.commit()
            found.update((k, a) for (k, _), a in zip(missing, arrays))
        return [found[k] for k in keys]

    def wrap(self, encode: Encode) -> Encode:
        def cached(texts: list[str], task: str | None) -> np.ndarray:
            return np.stack(self._cached(str(task), texts, lambda missing: encode(missing, task)))

        return cached

    def wrap_chunks(self, encode_chunks: EncodeChunks) -> EncodeChunks:
        """The same for chunk vectors: one ``[chunks, dim]`` array per document."""

        def cached(documents: list[str]) -> list[np.ndarray]:
            return self._cached("chunks", documents, encode_chunks)

        return cached


def _encode(array: np.ndarray, matrix: bool) -> bytes:
    if not matrix:
        return array.tobytes()
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _decode(blob: bytes, matrix: bool) -> np.ndarray:
    return np.load(io.BytesIO(blob)) if matrix else np.frombuffer(blob, dtype=np.float32)
