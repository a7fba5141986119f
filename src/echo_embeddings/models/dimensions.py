"""Where a model's vectors can be cut short: only where their leading dimensions are the strongest.

Keeping the first ``d`` dimensions (sentence-transformers' ``truncate_dim``, OpenAI's
``dimensions``) keeps quality for a model that ends in a PCA whitening (its components come
strongest first) and at the sizes a Matryoshka loss trained (``train --matryoshka-dims``); cut
anywhere else, the dropped dimensions carry as much as the kept ones. Every surface that offers a
cut (the server, the CLI, the LangChain and LlamaIndex fields) asks :func:`truncation_note`.
"""

from __future__ import annotations

from typing import Any

from .whitening import Whitening


def keeps_leading(model: Any) -> tuple[bool, tuple[int, ...]]:
    """(ends in a PCA whitening, the Matryoshka sizes it was trained at)."""
    last = model[len(model) - 1]
    pca = isinstance(last, Whitening) and last.kind == "pca"
    return pca, tuple(getattr(model[0], "matryoshka_dims", None) or ())


def truncation_note(model: Any, dim: int) -> str | None:
    """None when keeping the first ``dim`` dimensions keeps quality; else why it does not."""
    pca, matryoshka = keeps_leading(model)
    size = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else model.get_sentence_embedding_dimension()
    if dim >= size or pca or dim in matryoshka:
        return None
    why = (
        f"it was trained to work at {list(matryoshka)} only" if matryoshka
        else "only a model that ends in a PCA whitening, or one trained with a Matryoshka loss, keeps its strongest dimensions first"
    )
    return f"this model's {size} dimensions cannot be cut to {dim} without losing quality ({why})"
