"""MTEB metadata for a model from :func:`echo_embeddings.load`.

``mteb.evaluate(model, tasks)`` needs nothing from here: mteb reads the name and revision that
``load`` writes into the model's card data, and the per-task instructions that ``load`` gives
it as prompts (:mod:`echo_embeddings.models.prompts`). :func:`model_meta` is for the places where
mteb wants a ``ModelMeta`` instead of a model: ``mteb.evaluate(meta, tasks)`` loads the model
through :func:`load_for_mteb` only when a task is not already in the result cache.
"""

from __future__ import annotations

from typing import Any

from ..api import load
from ..models.model_card import configuration_fingerprint
from ..models.prompts import TASK_INSTRUCTIONS


def model_meta(model: Any) -> Any:
    """A ``mteb.models.ModelMeta`` for ``model`` (from :func:`echo_embeddings.load`): its results
    name and configuration revision, embedding size, token limit, cosine similarity, parameter
    count, whether it uses instructions, and a loader that builds the same model again.

    Raises ``ValueError`` for a model that ``load``'s arguments no longer rebuild (settings changed,
    modules added or weights trained since it was loaded): save it and load the folder first.
    Prompts changed after loading are fine: the loader sets them again.
    """
    from mteb.models import ModelMeta
    from mteb.models.model_meta import ScoringFunction

    arguments = model.load_arguments
    if arguments is None:
        raise ValueError("model_meta needs a model from echo_embeddings.load (it rebuilds the model from load's arguments)")
    if configuration_fingerprint(model, with_prompts=False) != model.loaded_configuration:
        raise ValueError(
            "This model changed since it was loaded (settings, modules or weights), so its load arguments would not "
            "rebuild it: save it (model.save(folder)) and pass echo_embeddings.load(folder) instead"
        )
    return ModelMeta.create_empty(
        overwrites={
            "loader": load_for_mteb,
            "loader_kwargs": {**arguments, "prompts": dict(model.prompts)},
            "name": model.model_card_data.model_name,
            "revision": configuration_fingerprint(model),
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "max_tokens": model.max_seq_length,
            "embed_dim": model.get_embedding_dimension(),
            "similarity_fn_name": ScoringFunction.from_str(model.similarity_fn_name or "cosine"),
            "framework": ["Sentence Transformers", "PyTorch"],
            "use_instructions": any(model.prompts.get(key) for key in TASK_INSTRUCTIONS),
            "open_weights": True,
            "modalities": ["text"],
        }
    )


def load_for_mteb(model_name: str, revision: str | None = None, device: str | None = None, prompts: dict[str, str] | None = None, **arguments: Any) -> Any:
    """The loader of :func:`model_meta`: ``load(**arguments)`` with ``prompts``, wrapped for mteb.
    It refuses a model whose configuration no longer matches ``revision`` (a saved folder changed
    since), so results are never filed under a revision that did not produce them."""
    from mteb.models import SentenceTransformerEncoderWrapper

    model = load(device=device, **arguments)
    if prompts is not None:
        model.prompts = dict(prompts)
    if revision is not None and configuration_fingerprint(model) != revision:
        raise ValueError(
            f"{model_name}: loading {arguments['model_name_or_path']!r} gives configuration {configuration_fingerprint(model)}, "
            f"not the revision {revision} this ModelMeta was made for"
        )
    return SentenceTransformerEncoderWrapper(model)
