"""What happens to pooled vectors on the surfaces that do not go through sentence-transformers'
``encode`` (the LangChain and LlamaIndex fields, Ray, the CLI): keep the leading dimensions,
normalise, quantize, in that order, as ``encode(truncate_dim=..., normalize_embeddings=...,
precision=...)`` does.

int8 and uint8 map each dimension's range onto 256 levels. sentence-transformers takes the ranges
from the vectors of the call itself, which is right for one large call and wrong for a query
embedded alone or a corpus embedded in pieces: every call would get its own scale. Here they are
given once (``ranges``: per-dimension minimum and maximum, from a sample of the corpus) and hold
for every call. binary and ubinary keep the sign of each dimension, 8 dimensions to a byte, and
need no ranges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


@dataclass(frozen=True)
class OutputFormat:
    """Truncation, normalisation and precision, checked once when made.

    Args:
        truncate_dim: keep the first ``truncate_dim`` dimensions (None: all). Quality holds only
            for a model that ends in PCA whitening or was trained with a Matryoshka loss (see
            :func:`~echo_embeddings.models.dimensions.truncation_note`).
        normalize: unit-length vectors (after truncation).
        precision: one of ``float32``, ``int8``, ``uint8``, ``binary``, ``ubinary``.
        ranges: for int8 / uint8, ``[2, dim]``: each kept dimension's minimum and maximum.
    """

    truncate_dim: int | None = None
    normalize: bool = False
    precision: str = "float32"
    ranges: Any = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.truncate_dim is not None and (not isinstance(self.truncate_dim, int) or self.truncate_dim < 1):
            raise ValueError(f"truncate_dim must be a positive int or None, got {self.truncate_dim!r}")
        if self.precision in ("int8", "uint8"):
            if self.ranges is None:
                raise ValueError(
                    f"precision {self.precision!r} needs ranges: each dimension's [minimum, maximum] over a sample of your corpus "
                    "(calibration_ranges(vectors) gives them), since a query embedded alone cannot calibrate its own scale"
                )
            ranges = np.asarray(self.ranges, dtype=np.float32)
            if ranges.ndim != 2 or ranges.shape[0] != 2:
                raise ValueError(f"ranges must be [2, dim] (minimums, then maximums), got shape {ranges.shape}")
            object.__setattr__(self, "ranges", ranges)
        elif self.ranges is not None:
            raise ValueError(f"ranges apply to int8 and uint8 only, not to {self.precision!r}")

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """``[n, dim]`` float vectors in this format (float32, int8 or uint8)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.truncate_dim is not None:
            vectors = vectors[:, : self.truncate_dim]
        if self.normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.where(norms == 0, 1, norms)
        if self.precision == "float32":
            return vectors
        if self.ranges is not None and self.ranges.shape[1] != vectors.shape[1]:
            raise ValueError(f"ranges cover {self.ranges.shape[1]} dimensions, the vectors have {vectors.shape[1]}")
        from sentence_transformers.util.quantization import quantize_embeddings

        return quantize_embeddings(vectors, precision=self.precision, ranges=self.ranges)

    def as_lists(self, vectors: np.ndarray) -> list[list[float]]:
        """:meth:`apply`, as lists of Python numbers (what LangChain and LlamaIndex pass around)."""
        return self.apply(vectors).tolist()


def calibration_ranges(vectors: Sequence[Sequence[float]] | np.ndarray) -> list[list[float]]:
    """Per-dimension ``[minimums, maximums]`` of sample vectors (already truncated and normalised
    as they will be served), the ``ranges`` int8 / uint8 need."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or len(array) < 2:
        raise ValueError(f"calibration needs a [n, dim] sample of at least 2 vectors, got shape {array.shape}")
    return [array.min(axis=0).tolist(), array.max(axis=0).tolist()]
