"""Metrics, following MTEB's conventions: Spearman and Pearson x 100 for STS; nDCG@10 with linear
gains, Recall@100 and MRR@10 for retrieval."""

from __future__ import annotations

import math
from collections.abc import Sequence


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
