"""Fine-tuning: training files read and checked, the loss chosen from their shape, and a run of the
stock sentence-transformers trainer on an echo model (LoRA by default).

Shapes of training data (TSV without quoting, CSV or JSONL, one header line / one object a line):

``scored``    two texts and a similarity score (``sentence1, sentence2, score``): ``CoSENTLoss``
``pairs``     an anchor and its positive (``anchor, positive``): ``MultipleNegativesRankingLoss``, the
              other positives of a batch serving as negatives
``triplets``  anchor, positive and a hard negative (``anchor, positive, negative``): the same loss

Echo templates apply in training exactly as at inference: the module's ``preprocess`` lays every
text into its template and the second copy is pooled. Pairs and triplets use the query template
for the anchor and the document template for the others (a sentence-transformers router mapping).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .evaluation import DataError

if TYPE_CHECKING:
    from .frozen_states import FrozenStates
    from .sentence_transformer import EchoSentenceTransformer

logger = logging.getLogger(__name__)

Kind = Literal["scored", "pairs", "triplets"]
KNOWN_COLUMNS: tuple[tuple[str, ...], ...] = (
    ("sentence1", "sentence2"),
    ("anchor", "positive", "negative"),
    ("anchor", "positive"),
    ("query", "positive", "negative"),
    ("query", "positive"),
    ("query", "document"),
    ("text1", "text2"),
)
DATASET_COLUMNS = {"scored": ("sentence1", "sentence2"), "pairs": ("anchor", "positive"), "triplets": ("anchor", "positive", "negative")}
ROUTES = {"anchor": "query", "positive": "document", "negative": "document"}
"""Pairs and triplets: the anchor reads the query template, the others the document template."""


@dataclass
class TrainingData:
    """Rows of one shape: texts (two or three) and, for ``scored``, the score last."""

    kind: Kind
    rows: list[tuple]
    source: str

    def dataset(self) -> Any:
        from datasets import Dataset

        columns = DATASET_COLUMNS[self.kind]
        data: dict[str, list] = {c: [r[i] for r in self.rows] for i, c in enumerate(columns)}
        if self.kind == "scored":
            data["score"] = [float(r[-1]) for r in self.rows]
        return Dataset.from_dict(data)

    def __len__(self) -> int:
        return len(self.rows)


def _records(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """Header and ``(line number, row)`` records of a TSV, CSV or JSONL file."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix.lower() in (".jsonl", ".json"):
        records = []
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}:{number}: not a JSON object ({error.msg}); write one object per line") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}:{number}: expected a JSON object per line, got {type(record).__name__}")
                records.append((number, record))
        header = list(records[0][1]) if records else []
        return header, records
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f) if path.suffix.lower() == ".csv" else csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None) or []
        records = [(number, dict(zip(header, row))) for number, row in enumerate(reader, 2) if row]
        return header, records


def read_training_file(path: str | Path, text_columns: Sequence[str] | None = None, score_column: str | None = None) -> TrainingData:
    """One training file, checked row by row: a bad row fails with its file, line and the fix."""
    path = Path(path)
    header, records = _records(path)
    if not records:
        raise DataError(f"{path}: no rows after the header")
    if text_columns:
        columns = tuple(text_columns)
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataError(f"{path}: no column {', '.join(map(repr, missing))}; the header has {header}")
    else:
        columns = next((c for c in KNOWN_COLUMNS if all(name in header for name in c)), ())
        if not columns:
            raise DataError(
                f"{path}: cannot tell which columns hold the texts (the header has {header}); "
                "name them with --text-columns, e.g. --text-columns sentence1,sentence2"
            )
    if len(columns) not in (2, 3):
        raise DataError(f"{path}: give two text columns (a pair) or three (anchor, positive, negative), got {list(columns)}")
    score = score_column if score_column is not None else ("score" if "score" in header and len(columns) == 2 else None)
    if score is not None and score not in header:
        raise DataError(f"{path}: no score column {score!r}; the header has {header}")
    kind: Kind = "triplets" if len(columns) == 3 else "scored" if score else "pairs"
    rows = []
    for number, record in records:
        texts = []
        for column in columns:
            value = record.get(column)
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{path}:{number}: column {column!r} is {'missing' if value is None else 'empty'}; every row needs its texts (fix or drop the row)")
            texts.append(value)
        if score:
            try:
                value = float(record.get(score))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise DataError(f"{path}:{number}: score {record.get(score)!r} in column {score!r} is not a number") from None
            if not math.isfinite(value):
                raise DataError(f"{path}:{number}: score {value} in column {score!r} is not finite")
            texts.append(value)
        rows.append(tuple(texts))
    return TrainingData(kind, rows, str(path))


def read_training_files(paths: Sequence[str | Path], text_columns: Sequence[str] | None = None, score_column: str | None = None) -> TrainingData:
    """Several files of one shape, concatenated in order."""
    parts = [read_training_file(p, text_columns, score_column) for p in paths]
    kinds = {p.kind for p in parts}
    if len(kinds) > 1:
        raise DataError(f"training files of different shapes cannot be mixed: {', '.join(f'{p.source} ({p.kind})' for p in parts)}")
    return TrainingData(parts[0].kind, [r for p in parts for r in p.rows], ", ".join(p.source for p in parts))


def pairs_from_corpus(path: str | Path, min_chars: int = 20) -> TrainingData:
    """Training pairs made from unlabelled documents, for adapting a retriever to a corpus without
    labels: a BEIR ``corpus.jsonl`` gives (title, text) pairs; a text file gives (paragraph, the
    next paragraph) pairs, paragraphs separated by blank lines. The corpus's other pairs in a batch
    are the negatives."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    rows: list[tuple] = []
    if path.suffix.lower() == ".jsonl":
        for number, record in _records(path)[1]:
            title, text = str(record.get("title") or "").strip(), str(record.get("text") or "").strip()
            if title and len(text) >= min_chars:
                rows.append((title, text))
    else:
        paragraphs = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n")]
        paragraphs = [p for p in paragraphs if len(p) >= min_chars]
        rows = list(zip(paragraphs, paragraphs[1:]))
    if len(rows) < 2:
        raise DataError(f"{path}: fewer than 2 training pairs could be made (a corpus.jsonl needs titles; a text file, paragraphs split by blank lines)")
    return TrainingData("pairs", rows, f"pairs from {path}")


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
) -> EchoSentenceTransformer:
    """Fine-tune ``model`` on ``data`` with ``SentenceTransformerTrainer`` and save it to ``out``.

    Args:
        model: a model from :func:`echo_embeddings.load` (its strategy's templates are used).
        data: from :func:`read_training_files` or :func:`pairs_from_corpus`.
        out: the folder the trained model is saved to (checkpoints go to ``out/checkpoints``).
        dev: evaluated during training (Spearman for scored pairs, triplet accuracy, or retrieval
            for pairs) and at the end.
        epochs, max_steps: how long (``max_steps`` wins when positive).
        batch_size: pairs per step; for pairs and triplets the batch also provides the negatives.
        learning_rate: default 2e-4 with LoRA, 2e-5 for full fine-tuning.
        lora, lora_rank, lora_layers: train a LoRA adapter (default) on these decoder layers
            (default all), or ``"below:N"``: the N layers just below the hidden state the model
            pools (:func:`layers_below_output`); ``lora=False`` trains every weight.
        loss: override the loss chosen from the data's shape.
        eval_steps, save_steps: how often to evaluate (default: about 10 times per run) and save a
            checkpoint (default: 4 times per run; the last two are kept).
        seed: for the data order and the adapter's initialisation.
        reuse_frozen: when the lowest trainable layer is above the first (LoRA on the top layers),
            keep each text's states at that layer's input the first time it is seen and start
            later steps on the same text there (see :mod:`echo_embeddings.frozen_states`): from
            the second epoch on, the frozen layers do not run. Off when those layers use dropout.
        max_seq_length: cut training prompts to this many tokens (texts are truncated before
            they are repeated, and the engine warns), e.g. to adapt to a corpus of long documents
            at a fraction of the cost. Evaluation on ``dev`` during training runs at it too. The
            saved model keeps its own ``max_seq_length``: that is what runs at inference.
        max_batch_tokens: token-budget batches (:mod:`echo_embeddings.training_batches`): each
            step holds at most this many prompt tokens and at most ``batch_size`` rows, rows of
            similar length together; ``None`` keeps fixed ``batch_size`` batches. With it, an
            epoch takes as many steps as its batches (``max_steps`` still wins).
        gradient_checkpointing: recompute the trained layers' activations in the backward pass
            instead of keeping them (transformers' checkpointing on the decoder): less memory
            for long texts or large batches, at the cost of one more forward of those layers.
        callbacks: transformers ``TrainerCallback`` objects handed to the trainer.
    """
    import torch
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers

    from . import add_lora

    if lora and model[0].lora is None:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            add_lora(model, r=lora_rank, alpha=2 * lora_rank, layers=_lora_layers(model, lora_layers))
    loss_fn = loss_for(model, data.kind, loss)
    # transformers 5.x renamed the argument (the old name warns); older releases know only the old one.
    names = {f.name for f in dataclasses.fields(SentenceTransformerTrainingArguments)}
    checkpointing_argument = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    with _prompt_length(model[0], max_seq_length), _prefix_cache_off(model[0], gradient_checkpointing):
        dataset = data.dataset()
        sampler: Any = BatchSamplers.NO_DUPLICATES if data.kind != "scored" else BatchSamplers.BATCH_SAMPLER
        routes = ROUTES if data.kind != "scored" else {}
        batches_per_epoch = math.ceil(len(data) / batch_size)
        if max_batch_tokens is not None:
            from .training_batches import token_budget_sampler

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
        engine = model[0].engine
        engine.frozen_states = _frozen_states(model[0].model) if reuse_frozen else None
        try:
            trainer.train()
        finally:
            kept, engine.frozen_states = engine.frozen_states, None
    if kept is not None:
        logger.info(
            "frozen layers 0..%d: %d rows (a text in a template) computed once, served %d times from kept states (%d token states)",
            kept.start - 1, kept.computed, kept.served, kept.tokens,
        )
    model.save(str(out))
    return model


def layers_below_output(model: EchoSentenceTransformer, count: int) -> list[int]:
    """The ``count`` decoder layers just below the hidden state ``model`` pools (its
    ``output_layer``): LoRA there adapts the layers nearest the vector, no layer above the pooled
    state runs (early exit), and the frozen ones below run once per text (frozen-state reuse)."""
    from .forward import resolve_output_layer

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
def _prompt_length(module: Any, length: int | None) -> Iterator[None]:
    """``module.max_seq_length`` set to ``length`` for the block (``None``: unchanged), then put back."""
    inference_length = module.max_seq_length
    if length is not None:
        module.max_seq_length = length  # validated by the setting itself
        logger.info("training prompts cut to %d tokens; the saved model keeps max_seq_length=%d", length, inference_length)
    try:
        yield
    finally:
        module.max_seq_length = inference_length


def _frozen_states(decoder: Any) -> FrozenStates | None:
    from .frozen_states import FrozenStates, dropout_below

    states = FrozenStates(decoder)
    if states.start == 0:
        return None  # nothing below the trainable layers
    why = dropout_below(decoder, states.start)
    if why:
        warnings.warn(f"not reusing the frozen layers' states: {why}, so they change from step to step", stacklevel=3)
        return None
    return states
