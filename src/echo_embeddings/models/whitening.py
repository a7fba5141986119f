"""Whitening: a corpus-fitted linear map after the echo module, saved with the model.

Decoder embeddings are strongly anisotropic: a few directions shared by every text dominate
cosine similarity. Fitted on unlabelled texts (the texts you compare), PCA whitening centers
the vectors, rotates them onto their principal axes, keeps the ``dim`` strongest and scales each
to unit variance; ``kind="center"`` only subtracts the mean. It serves symmetric similarity (STS,
clustering, deduplication), where every text is embedded with one template: measured on SciFact,
a transform fitted on the documents lowered echo's query-to-document retrieval, because queries
use another template and so another mean.

    model = echo_embeddings.load("smollm2-135m", "echo")
    echo_embeddings.fit_whitening(model, corpus_texts, dim=128)   # appends (or refits) the module
    model.save("echo-whitened")                                   # mean and projection in safetensors

The fit streams: it accumulates the sum and the sum of outer products in float64, so memory is
``dim_in**2`` numbers whatever the corpus size.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import torch
from sentence_transformers.base.modules.module import Module

Kind = Literal["pca", "center"]
DEFAULT_DIM = 128
"""Kept dimensions when ``dim=None`` (capped at the input's): see the README's whitening table."""


class Whitening(Module):
    """``(x - mean) @ projection``: ``[n, in_features]`` to ``[n, out_features]``.

    Args:
        in_features: the dimension of the incoming sentence embeddings.
        out_features: the kept dimension (``in_features`` for ``kind="center"``).
        kind: ``"pca"`` (PCA whitening) or ``"center"`` (mean removal only).
        fitted_on: how many texts the statistics came from (for readers of the saved config).
    """

    config_keys = ["in_features", "out_features", "kind", "fitted_on"]

    def __init__(self, in_features: int, out_features: int | None = None, kind: Kind = "pca", fitted_on: int = 0) -> None:
        super().__init__()
        if kind not in ("pca", "center"):
            raise ValueError(f"kind must be 'pca' or 'center', got {kind!r}")
        out_features = in_features if out_features is None or kind == "center" else out_features
        if not 1 <= out_features <= in_features:
            raise ValueError(f"out_features must be between 1 and in_features={in_features}, got {out_features}")
        self.in_features, self.out_features, self.kind, self.fitted_on = in_features, out_features, kind, fitted_on
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("projection", torch.eye(in_features)[:, :out_features].clone())

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        embeddings = features["sentence_embedding"]
        features["sentence_embedding"] = (embeddings.float() - self.mean) @ self.projection
        return features

    def _apply(self, fn: Any, recurse: bool = True) -> Whitening:
        """Moves follow the model; casts do not: the statistics stay fp32 under a bf16 decoder
        (sentence-transformers casts every module to the decoder's dtype), and so does the output."""
        super()._apply(lambda t: fn(t).to(t.dtype) if t.is_floating_point() else fn(t), recurse)
        return self

    def get_embedding_dimension(self) -> int:
        return self.out_features

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        self.save_config(output_path)
        self.save_torch_weights(output_path, safe_serialization=safe_serialization)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs: Any) -> Whitening:
        hub = {k: kwargs[k] for k in ("token", "cache_folder", "revision", "local_files_only") if k in kwargs}
        config = cls.load_config(model_name_or_path, subfolder=subfolder, **hub)
        module = cls(**config)
        return cls.load_torch_weights(model_name_or_path, subfolder=subfolder, model=module, **hub)

    @classmethod
    def from_statistics(cls, stats: CovarianceAccumulator, dim: int | None = None, kind: Kind = "pca") -> Whitening:
        """The transform for accumulated statistics; raises when there are too few texts."""
        d = stats.dim
        if kind == "pca":
            dim = min(DEFAULT_DIM, d) if dim is None else dim
            if not 1 <= dim <= d:
                raise ValueError(f"dim must be between 1 and the embedding dimension {d}, got {dim}")
            if stats.count <= dim:
                raise ValueError(f"Whitening to {dim} dimensions needs more than {dim} texts; got {stats.count}. Fit on more texts or pass a smaller dim.")
            if stats.count <= d:
                warnings.warn(
                    f"Fitted on {stats.count} texts for {d}-dimensional embeddings: the covariance has rank below {d}, so only its "
                    f"strongest directions are reliable. {dim} of them are kept; fit on more texts than {d} to use the full estimate.",
                    stacklevel=3,
                )
        elif stats.count < 1:
            raise ValueError("Centering needs at least one text")
        module = cls(d, dim if kind == "pca" else d, kind, stats.count)
        module.mean.copy_(torch.from_numpy(stats.mean).float())
        if kind == "pca":
            values, vectors = np.linalg.eigh(stats.covariance)
            order = np.argsort(values)[::-1][: module.out_features]
            scale = 1.0 / np.sqrt(np.maximum(values[order], values.max() * 1e-12))
            module.projection.copy_(torch.from_numpy(vectors[:, order] * scale).float())
        return module


class CovarianceAccumulator:
    """Running count, sum and sum of outer products (float64): the mean and covariance of a
    stream of ``[n, dim]`` batches in ``dim**2`` memory."""

    def __init__(self, dim: int) -> None:
        self.dim, self.count = dim, 0
        self._sum = np.zeros(dim)
        self._outer = np.zeros((dim, dim))

    def update(self, batch: np.ndarray | torch.Tensor) -> None:
        x = batch.detach().cpu().double().numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"Expected a [n, {self.dim}] batch, got shape {x.shape}")
        self.count += x.shape[0]
        self._sum += x.sum(axis=0)
        self._outer += x.T @ x

    @property
    def mean(self) -> np.ndarray:
        return self._sum / max(self.count, 1)

    @property
    def covariance(self) -> np.ndarray:
        """The unbiased sample covariance."""
        mean = self.mean
        return (self._outer - self.count * np.outer(mean, mean)) / max(self.count - 1, 1)


def fit_whitening(
    model: Any,
    texts: Iterable[str],
    dim: int | None = None,
    *,
    kind: Kind = "pca",
    task: str | None = None,
    chunk_size: int = 4096,
    show_progress_bar: bool = False,
    **encode_options: Any,
) -> Any:
    """Fit whitening on unlabelled ``texts`` (any iterable, read lazily) and put the module at the
    end of ``model``'s module list, replacing a whitening already there; returns the model.

    Args:
        model: a model from :func:`echo_embeddings.load` (any module list).
        texts: the corpus, e.g. the texts you will compare; no labels are used.
        dim: dimensions kept by PCA whitening; None for the default (128, or the embedding size if smaller).
        kind: ``"pca"`` or ``"center"``.
        task: the template the corpus is embedded with: None (default) for the one ``encode``
            uses, ``"query"`` or ``"document"`` to fit on what ``encode_query`` / ``encode_document`` give.
        chunk_size: texts embedded at a time (``model.stream``).
        show_progress_bar: show a progress bar.
        **encode_options: passed to ``model.stream``.
    """
    from .sentence_transformer import EchoSentenceTransformer

    modules = list(model)
    position = next((i for i, m in enumerate(modules) if isinstance(m, Whitening)), len(modules))
    if position != len(modules) and position != len(modules) - 1:
        raise ValueError(f"The whitening module must come last; this model has {modules[position + 1:]} after it")
    upstream = model if position == len(modules) else EchoSentenceTransformer(modules=modules[:position], device=str(model.device))
    stats: CovarianceAccumulator | None = None
    options = {"task": task} if task else {}
    for chunk in upstream.stream(texts, chunk_size=chunk_size, show_progress_bar=show_progress_bar, **options, **encode_options):
        stats = stats or CovarianceAccumulator(chunk.shape[1])
        stats.update(chunk)
    if stats is None:
        raise ValueError("fit_whitening got no texts")
    module = Whitening.from_statistics(stats, dim, kind).to(model.device)
    if position == len(modules):
        model.append(module)
    else:
        model[position] = module
    return model
