"""A fine-tuning run: the stock sentence-transformers trainer on an echo model (LoRA by default).

Echo templates apply in training exactly as at inference: the module's ``preprocess`` lays every
text into its template and the second copy is pooled. Pairs and triplets use the query template
for the anchor and the document template for the others (a sentence-transformers router mapping).
The data come from :mod:`echo_embeddings.data`, the loss from :mod:`echo_embeddings.training.losses`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from ..api import add_lora
from ..data import TrainingData
from ..engine.model_parts import resolve_output_layer
from ..models.sentence_transformer import EchoSentenceTransformer
from .frozen_states import FrozenStates, dropout_below
from .losses import evaluator_for, loss_for

logger = logging.getLogger(__name__)

ROUTES = {"anchor": "query", "positive": "document", "negative": "document"}
"""Pairs and triplets: the anchor reads the query template, the others the document template."""

def train(
    model: EchoSentenceTransformer,
    data: TrainingData,
    out: str | Path,
    *,
    dev: TrainingData | None = None,
    epochs: float = 1.0,
    max_steps: int = -1,
    batch_size: int = 16,
    learning_rate: float | None = None,
    lora: bool = True,
    lora_rank: int = 16,
    lora_layers: Sequence[int] | str | None = None,
    loss: str | None = None,
    eval_steps: int | None = None,
    save_steps: int | None = None,
    seed: int = 0,
    show_progress_bar: bool = True,
    reuse_frozen: bool = True,
    max_seq_length: int | None = None,
    max_batch_tokens: int | None = None,
    gradient_checkpointing: bool = False,
    callbacks: Sequence[Any] = (),
    matryoshka_dims: Sequence[int] | None = None,
) -> EchoSentenceTransformer:
    """Fine-tune ``model`` on ``data`` with ``SentenceTransformerTrainer`` and save it to ``out``.

    Args:
        model: a model from :func:`echo_embeddings.load` (its strategy's templates are used).
        data: from :func:`echo_embeddings.data.read_training_files` or :func:`~echo_embeddings.data.pairs_from_corpus`.
        out: the folder the trained model is saved to (checkpoints go to ``out/checkpoints``).
        dev: evaluated during training (Spearman for scored pairs, triplet accuracy, or retrieval
            for pairs) and at the end.
        epochs: how long, in passes over the data.
        max_steps: how long, in steps (wins over ``epochs`` when positive).
        batch_size: pairs per step; for pairs and triplets the batch also provides the negatives.
        learning_rate: default 2e-4 with LoRA, 2e-5 for full fine-tuning.
        lora: train a LoRA adapter (default); ``False`` trains every weight.
        lora_rank: the adapter's rank.
        lora_layers: the decoder layers the adapter goes on (default all), or ``"below:N"``: the
            N layers just below the hidden state the model pools (:func:`layers_below_output`).
        loss: override the loss chosen from the data's shape.
        eval_steps: how often to evaluate (default: about 10 times per run).
        save_steps: how often to save a checkpoint (default: 4 times per run; the last two are kept).
        seed: for the data order and the adapter's initialisation.
        reuse_frozen: when the lowest trainable layer is above the first (LoRA on the top layers),
            keep each text's states at that layer's input the first time it is seen and start
            later steps on the same text there (see :mod:`echo_embeddings.training.frozen_states`): from
            the second epoch on, the frozen layers do not run. Off when those layers use dropout.
        max_seq_length: cut training prompts to this many tokens (texts are truncated before
            they are repeated, and the engine warns), e.g. to adapt to a corpus of long documents
            at a fraction of the cost. Evaluation on ``dev`` during training runs at it too. The
            saved model keeps its own ``max_seq_length``: that is what runs at inference.
        max_batch_tokens: token-budget batches (:mod:`echo_embeddings.training.batches`): each
            step holds at most this many prompt tokens and at most ``batch_size`` rows, rows of
            similar length together; ``None`` keeps fixed ``batch_size`` batches. With it, an
            epoch takes as many steps as its batches (``max_steps`` still wins).
        gradient_checkpointing: recompute the trained layers' activations in the backward pass
            instead of keeping them (transformers' checkpointing on the decoder): less memory
            for long texts or large batches, at the cost of one more forward of those layers.
        callbacks: transformers ``TrainerCallback`` objects handed to the trainer.
        matryoshka_dims: train with sentence-transformers' ``MatryoshkaLoss`` around the loss,
            so that the leading ``d`` dimensions work alone for each ``d``; the saved model records
            them (``matryoshka_dims``), and the server then accepts them as ``dimensions``.
    """
    import torch
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers

    if lora and model[0].lora is None:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            add_lora(model, r=lora_rank, alpha=2 * lora_rank, layers=_lora_layers(model, lora_layers))
    loss_fn = loss_for(model, data.kind, loss)
    dims = check_matryoshka_dims(model, matryoshka_dims)
    if dims is not None:
        from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss

        loss_fn = MatryoshkaLoss(model, loss_fn, matryoshka_dims=sorted(dims, reverse=True))
    # transformers 5.x renamed the argument (the old name warns); older releases know only the old one.
    names = {f.name for f in dataclasses.fields(SentenceTransformerTrainingArguments)}
    checkpointing_argument = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    with prompt_length(model[0], max_seq_length), _prefix_cache_off(model[0], gradient_checkpointing):
        dataset = data.dataset()
        sampler: Any = BatchSamplers.NO_DUPLICATES if data.kind != "scored" else BatchSamplers.BATCH_SAMPLER
        routes = ROUTES if data.kind != "scored" else {}
        batches_per_epoch = math.ceil(len(data) / batch_size)
        if max_batch_tokens is not None:
            from .batches import token_budget_sampler

            # Counting the rows' tokens warns once, with totals, if training cuts texts short.
            sampler = token_budget_sampler(model, dataset, max_batch_tokens, routes=routes, no_duplicates=data.kind != "scored")
            batches_per_epoch = len(sampler(dataset, batch_size=batch_size, drop_last=False, seed=seed))
            logger.info("token-budget batches: %d an epoch (at most %d rows and %d tokens each)", batches_per_epoch, batch_size, max_batch_tokens)
        steps = max_steps if max_steps > 0 else math.ceil(batches_per_epoch * epochs)
        every = eval_steps or max(steps // 10, 1)
        args = SentenceTransformerTrainingArguments(
            output_dir=str(Path(out) / "checkpoints"),
            num_train_epochs=epochs,
            max_steps=max_steps,
            per_device_train_batch_size=batch_size,
            per_device_eval_batch_size=batch_size,
            learning_rate=learning_rate or (2e-4 if model[0].lora is not None else 2e-5),
            warmup_steps=max(steps // 10, 0),
            eval_strategy="steps" if dev is not None else "no",
            eval_steps=eval_steps or every,
            save_strategy="steps",
            save_steps=save_steps or max(steps // 4, 1),
            save_total_limit=2,
            logging_steps=max(every // 2, 1),
            seed=seed,
            bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
            batch_sampler=sampler,
            router_mapping=routes,
            **{checkpointing_argument: gradient_checkpointing},
            disable_tqdm=not show_progress_bar,
            dataloader_pin_memory=torch.cuda.is_available(),
            report_to=[],
        )
        trainer = SentenceTransformerTrainer(
            model=model, args=args, train_dataset=dataset, loss=loss_fn, evaluator=evaluator_for(dev) if dev is not None else None,
            callbacks=list(callbacks) or None,
        )
        kept = _frozen_states(model[0].model) if reuse_frozen else None
        with model[0].engine.entering_with(kept) if kept is not None else nullcontext():
            trainer.train()
    if kept is not None:
        logger.info(
            "frozen layers 0..%d: %d rows (a text in a template) computed once, served %d times from kept states (%d token states)",
            kept.start - 1, kept.computed, kept.served, kept.tokens,
        )
    if dims is not None:
        model[0].matryoshka_dims = dims
    model.save(str(out))
    return model


def check_matryoshka_dims(model: EchoSentenceTransformer, dims: Sequence[int] | None) -> tuple[int, ...] | None:
    """The Matryoshka sizes, checked against the model's output size (before any training)."""
    if dims is None:
        return None
    size = model.get_embedding_dimension()
    wrong = [d for d in dims if isinstance(d, bool) or not isinstance(d, int) or not 0 < d <= size]
    if wrong or not dims:
        raise ValueError(f"matryoshka dims {list(dims)}: give sizes between 1 and the model's {size} dimensions")
    return tuple(sorted(set(dims) | {size}))


def layers_below_output(model: EchoSentenceTransformer, count: int) -> list[int]:
    """The ``count`` decoder layers just below the hidden state ``model`` pools (its
    ``output_layer``): LoRA there adapts the layers nearest the vector, no layer above the pooled
    state runs (early exit), and the frozen ones below run once per text (frozen-state reuse)."""
    pooled, _ = resolve_output_layer(model[0].model, model[0].output_layer)  # hidden state k is layer k-1's output
    if not 1 <= count <= pooled:
        raise ValueError(f"below:{count}: the model pools hidden state {pooled}, so give 1 to {pooled} layers below it")
    return list(range(pooled - count, pooled))


def below_count(spec: str) -> int:
    """N of a ``"below:N"`` layer spec (checked before any model work)."""
    kind, _, count = spec.partition(":")
    if kind != "below" or not count.isdigit() or int(count) < 1:
        raise ValueError(f"lora layers {spec!r}: below:N takes a positive number of layers (the N layers below the pooled hidden state)")
    return int(count)


def _lora_layers(model: EchoSentenceTransformer, spec: Sequence[int] | str | None) -> list[int] | None:
    if spec is None:
        return None
    return layers_below_output(model, below_count(spec)) if isinstance(spec, str) else list(spec)


@contextmanager
def _prefix_cache_off(module: Any, off: bool) -> Iterator[None]:
    """The engine's prefix cache off for the block when ``off`` (gradient checkpointing drops the
    key/value cache in training), then as it was."""
    engine = module.engine
    before = engine.prefix_cache
    if off and before:
        engine.prefix_cache = False
        logger.info("prefix cache off for the run: gradient checkpointing drops the key/value cache while training")
    try:
        yield
    finally:
        engine.prefix_cache = before


@contextmanager
def prompt_length(module: Any, length: int | None, purpose: str = "training") -> Iterator[None]:
    """``module.max_seq_length`` set to ``length`` for the block (``None``: unchanged), then put back.

    The cut is announced once here, so the engine's warning for each batch it truncates is not
    repeated inside the block."""
    inference_length = module.max_seq_length
    if length is None:
        yield
        return
    module.max_seq_length = length  # validated by the setting itself
    logger.info("%s prompts cut to %d tokens; the saved model keeps max_seq_length=%d", purpose, length, inference_length)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*truncated before repetition")
            yield
    finally:
        module.max_seq_length = inference_length


def _frozen_states(decoder: Any) -> FrozenStates | None:
    states = FrozenStates(decoder)
    if states.start == 0:
        return None  # nothing below the trainable layers
    why = dropout_below(decoder, states.start)
    if why:
        warnings.warn(f"not reusing the frozen layers' states: {why}, so they change from step to step", stacklevel=3)
        return None
    return states
