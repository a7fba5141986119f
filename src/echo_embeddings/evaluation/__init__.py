"""Evaluation on local data: metrics (``metrics.py``), STS / retrieval / classification runs
(``tasks.py``) and an on-disk embedding cache (``cache.py``). Metrics follow MTEB's conventions.

The task files are read by :mod:`echo_embeddings.data`; its readers are re-exported here.
"""

from ..data import Classification, DataError, Retrieval, read_classification, read_retrieval, read_table, sample_corpus
from .cache import EmbeddingCache
from .metrics import mrr_at_k, ndcg_at_k, pearson, recall_at_k, spearman
from .tasks import Encode, EncodeChunks, evaluate_classification, evaluate_retrieval, evaluate_sts

__all__ = [
    "Classification",
    "DataError",
    "EmbeddingCache",
    "Encode",
    "EncodeChunks",
    "Retrieval",
    "evaluate_classification",
    "evaluate_retrieval",
    "evaluate_sts",
    "mrr_at_k",
    "ndcg_at_k",
    "pearson",
    "read_classification",
    "read_retrieval",
    "read_table",
    "recall_at_k",
    "sample_corpus",
    "spearman",
]
