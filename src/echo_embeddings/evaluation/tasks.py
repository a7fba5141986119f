"""Scoring an encoder on local tasks: STS (Spearman of cosine similarity), BEIR-style retrieval
(exact cosine search, optionally over chunks) and classification (a logistic regression on the
standardized embeddings, fixed seeds, a capped training sample per run). The task files are
read by :mod:`echo_embeddings.data`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..data import Classification, Retrieval
from .metrics import mrr_at_k, ndcg_at_k, pearson, recall_at_k, spearman

Encode = Callable[[list[str], "str | None"], np.ndarray]
"""``encode(texts, task)`` -> unit-length vectors; task is None, "query" or "document"."""
EncodeChunks = Callable[[list[str]], "list[np.ndarray]"]
"""``encode_chunks(documents)`` -> per document, its chunks' unit-length vectors ``[chunks, dim]``."""


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
