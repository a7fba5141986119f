"""Okapi BM25 over a corpus held in memory: the lexical ranker that can stand in for the embedder in
the generated-query filter (:func:`echo_embeddings.training.generated_queries.round_trip`).

Ranking a whole corpus with a decoder embedder costs a forward pass over every passage (on a CPU,
minutes per thousand passages); BM25 ranks it in seconds. Words are lower-cased runs of letters
and digits, with no stemming or stop list; ``k1`` and ``b`` are the usual Robertson-Zaragoza
values."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import numpy as np
from scipy import sparse

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class BM25:
    """``BM25(passages).scores(queries)``: one row of scores over the passages per query."""

    def __init__(self, passages: Sequence[str], k1: float = 1.2, b: float = 0.75):
        self.vocabulary: dict[str, int] = {}
        rows, columns = [], []
        for i, text in enumerate(passages):
            for word in words(text):
                rows.append(i)
                columns.append(self.vocabulary.setdefault(word, len(self.vocabulary)))
        shape = (len(passages), max(len(self.vocabulary), 1))
        counts = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, columns)), shape=shape)  # duplicates add up
        counts.sum_duplicates()
        lengths = np.asarray(counts.sum(axis=1)).ravel()
        frequency = np.bincount(counts.indices, minlength=shape[1])
        idf = np.log1p((len(passages) - frequency + 0.5) / (frequency + 0.5)).astype(np.float32)
        norm = k1 * (1 - b + b * lengths / max(lengths.mean(), 1e-9))
        tf = counts.data
        row_of = np.repeat(np.arange(shape[0]), np.diff(counts.indptr))
        counts.data = (tf * (k1 + 1) / (tf + norm[row_of]) * idf[counts.indices]).astype(np.float32)
        self.weights = counts.T.tocsr()  # vocabulary x passages

    def query_matrix(self, queries: Sequence[str]) -> sparse.csr_matrix:
        rows, columns = [], []
        for i, query in enumerate(queries):
            for word in set(words(query)):
                if word in self.vocabulary:
                    rows.append(i)
                    columns.append(self.vocabulary[word])
        return sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, columns)), shape=(len(queries), self.weights.shape[0]))

    def scores(self, queries: Sequence[str], chunk: int = 1024) -> Iterator[np.ndarray]:
        """Dense score rows (queries x passages), ``chunk`` queries at a time to bound memory."""
        for start in range(0, len(queries), chunk):
            yield (self.query_matrix(queries[start : start + chunk]) @ self.weights).toarray()
