"""The loss and the dev evaluator chosen from the training data's shape.

``scored``    two texts and a similarity score: ``CoSENTLoss`` (or AnglE, cosine similarity)
``pairs``     an anchor and its positive: ``MultipleNegativesRankingLoss``, the other positives of a
              batch serving as negatives (or its cached variant, for large batches)
``triplets``  anchor, positive and a hard negative: the same loss
"""

from __future__ import annotations

from typing import Any

from ..data import DataError, Kind, TrainingData
from ..models.sentence_transformer import EchoSentenceTransformer


LOSSES = {"cosent": "CoSENTLoss", "angle": "AnglELoss", "cosine": "CosineSimilarityLoss", "mnrl": "MultipleNegativesRankingLoss", "cached-mnrl": "CachedMultipleNegativesRankingLoss"}
SCORED_LOSSES = ("cosent", "angle", "cosine")


def check_loss(kind: Kind, name: str | None) -> str:
    """The loss name for the data's shape, or ``name`` if it fits the shape (checked before any model work)."""
    name = name or ("cosent" if kind == "scored" else "mnrl")
    if name not in LOSSES:
        raise DataError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}")
    scored = name in SCORED_LOSSES
    if scored != (kind == "scored"):
        raise DataError(f"loss {name!r} needs {'scored pairs' if scored else 'pairs or triplets'}, but the data are {kind}")
    return name


def loss_for(model: EchoSentenceTransformer, kind: Kind, name: str | None = None) -> Any:
    """The loss for the data's shape: CoSENT for scored pairs, multiple negatives ranking for pairs
    and triplets; or by ``name`` (cosent, angle, cosine, mnrl, cached-mnrl)."""
    from sentence_transformers.sentence_transformer import losses

    return getattr(losses, LOSSES[check_loss(kind, name)])(model)


def evaluator_for(dev: TrainingData, name: str = "dev") -> Any:
    from sentence_transformers.sentence_transformer import evaluation

    if dev.kind == "scored":
        return evaluation.EmbeddingSimilarityEvaluator([r[0] for r in dev.rows], [r[1] for r in dev.rows], [float(r[2]) for r in dev.rows], name=name)
    if dev.kind == "triplets":
        return evaluation.TripletEvaluator([r[0] for r in dev.rows], [r[1] for r in dev.rows], [r[2] for r in dev.rows], name=name)
    queries = {f"q{i}": r[0] for i, r in enumerate(dev.rows)}
    corpus = {f"d{i}": r[1] for i, r in enumerate(dev.rows)}
    return evaluation.InformationRetrievalEvaluator(queries, corpus, {f"q{i}": {f"d{i}"} for i in range(len(dev.rows))}, name=name)
