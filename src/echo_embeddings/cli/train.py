"""``echo-embeddings train``: fine-tune an echo model on labelled pairs, triplets, or pairs made
from a corpus (LoRA by default). Every file is read and checked before the model loads."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from ..data import DataError, pairs_from_corpus, read_passages, read_training_file, read_training_files
from .common import add_device, check_model, check_output_file, load_model, split


def training_dtype(device: str | None) -> str:
    """fp32 on the CPU (bf16 training there was not measured), auto (bf16) on GPUs."""
    from ..engine.loading import default_device

    return "float32" if (device or default_device().type).startswith("cpu") else "auto"


def add_parser(commands: Any) -> None:
    tr = commands.add_parser("train", help="fine-tune an echo model on labelled pairs, triplets, or pairs made from your corpus")
    tr.add_argument("train_files", nargs="*", metavar="TRAIN_FILE", help="TSV/CSV/JSONL: scored pairs (sentence1, sentence2, score), pairs or triplets")
    tr.add_argument("--pairs-from", default=None, metavar="CORPUS", help="no labels: make pairs from a BEIR corpus.jsonl (title, text) or a text file (neighbouring paragraphs)")
    tr.add_argument(
        "--queries-from", default=None, metavar="CORPUS",
        help="no labels: the model writes a query for each passage of a BEIR corpus.jsonl, a JSONL/Parquet file or a text file of paragraphs, "
        "keeps those whose passage it ranks in the top --filter-top-k, and trains on them "
        "(unless given, --lora-layers below:7 and --max-seq-length 256: passages are long)",
    )
    tr.add_argument("--corpus-column", default=None, help="the text field of a JSONL/Parquet --queries-from corpus (default: text)")
    tr.add_argument("--generator", default=None, help="the causal LM that writes the queries (default: --model)")
    tr.add_argument(
        "--max-passages", type=int, default=2000, metavar="N",
        help="write queries for a random sample of N passages (under --seed; every passage still ranks in the filter); 0: all (default: %(default)s)",
    )
    tr.add_argument("--queries-per-passage", type=int, default=1, help="queries written for each passage; more than one are sampled (default: %(default)s)")
    tr.add_argument("--filter-top-k", type=int, default=3, help="keep a query when its own passage ranks in the top K (default: %(default)s)")
    tr.add_argument(
        "--filter-with", choices=["bm25", "embedder"], default="bm25",
        help="what ranks the corpus for the round trip and the hard negatives: BM25 (seconds) or the zero-shot model (a pass over the corpus) (default: %(default)s)",
    )
    tr.add_argument(
        "--hard-negatives", action=argparse.BooleanOptionalAction, default=False,
        help="also train with the best-ranked other passage as a negative (default: off; on SciFact they changed nothing and took about twice the training time)",
    )
    tr.add_argument("--pairs-out", default=None, metavar="FILE", help="write every generated query (JSONL: passage_id, query, rank, kept, negative_id); those cut off at 32 tokens are only counted in the log")
    tr.add_argument("--model", default=None, help="alias, id, folder or .gguf (default: the embedded smollm2-135m)")
    tr.add_argument("--strategy", default=None, help="preset or template (default: echo)")
    tr.add_argument("--out", required=True, help="folder for the trained model (checkpoints in OUT/checkpoints)")
    tr.add_argument("--dev", default=None, help="a file of the same shape, evaluated during training")
    tr.add_argument("--epochs", type=float, default=1.0, help="passes over the training data; fractions allowed (default: %(default)s)")
    tr.add_argument("--max-steps", type=int, default=-1, help="stop after N steps (overrides --epochs)")
    tr.add_argument("--batch-size", type=int, default=16, help="pairs per step (default: %(default)s)")
    tr.add_argument("--learning-rate", type=float, default=None, help="default 2e-4 with LoRA, 2e-5 without")
    tr.add_argument("--lora", action=argparse.BooleanOptionalAction, default=True, help="train a LoRA adapter (default) or every weight")
    tr.add_argument("--lora-rank", type=int, default=16, help="rank r of the LoRA matrices; alpha is 2r (default: %(default)s)")
    tr.add_argument(
        "--lora-layers", default=None,
        help="decoder layers to adapt: e.g. 20-29 or 0,5,9, or below:N for the N layers below the pooled hidden state (default: all)",
    )
    tr.add_argument("--merge", action="store_true", help="save full weights with the adapter merged in (default: the adapter alone)")
    tr.add_argument("--text-columns", default=None, help="text columns, two or three, e.g. sentence1,sentence2 (default: recognised names)")
    tr.add_argument("--score-column", default=None, help="score column of scored pairs (default: score, if present)")
    tr.add_argument("--loss", default=None, choices=["cosent", "angle", "cosine", "mnrl", "cached-mnrl"], help="override the loss chosen from the data")
    tr.add_argument("--seed", type=int, default=0, help="seed for shuffling, dropout and the adapter's initialisation (default: %(default)s)")
    tr.add_argument(
        "--reuse-frozen", action=argparse.BooleanOptionalAction, default=True,
        help="keep each text's states below the lowest trained layer and reuse them in later epochs (default: on)",
    )
    tr.add_argument(
        "--max-seq-length", type=int, default=None, metavar="N",
        help="cut training prompts to N tokens, said once in the log (long documents train faster); the saved model keeps its own",
    )
    tr.add_argument(
        "--max-batch-tokens", type=int, default=None, metavar="N",
        help="token-budget batches: at most N prompt tokens (and --batch-size rows) a step, rows of similar length together",
    )
    tr.add_argument("--gradient-checkpointing", action="store_true", help="recompute the trained layers' activations in backward (less memory)")
    tr.add_argument(
        "--matryoshka-dims", default=None, metavar="D,D,...",
        help="train with MatryoshkaLoss so that the leading D dimensions work alone, e.g. 64,128,256 (the server's 'dimensions')",
    )
    add_device(tr, dtype_default="float32 on the CPU, auto on GPUs", quantize=False)


def _layers(spec: str | None) -> list[int] | str | None:
    if not spec:
        return None
    if spec.startswith("below:"):
        from ..training import below_count

        try:
            below_count(spec)
        except ValueError as error:
            raise DataError(f"--lora-layers: {error}") from None
        return spec  # resolved against the model's pooled hidden state once it is loaded
    try:
        out: list[int] = []
        for part in spec.split(","):
            first, _, last = part.partition("-")
            out.extend(range(int(first), int(last or first) + 1))
        return out
    except ValueError:
        raise DataError(f"--lora-layers {spec!r}: give layer numbers and ranges, e.g. 20-29 or 0,5,9, or below:N") from None


def run(args: argparse.Namespace) -> None:
    from .. import training as tr
    from ..api import merge_lora

    if sum(map(bool, (args.train_files, args.pairs_from, args.queries_from))) != 1:
        raise DataError("give training files, --pairs-from CORPUS or --queries-from CORPUS (one of the three)")
    columns = split([args.text_columns]) if args.text_columns else None
    # Every file is read and checked before the model loads.
    passages = read_passages(args.queries_from, args.corpus_column) if args.queries_from else None
    if passages is not None:
        if args.queries_per_passage < 1 or args.filter_top_k < 1:
            raise DataError("--queries-per-passage and --filter-top-k take a positive number")
        if args.max_passages < 0:
            raise DataError(f"--max-passages {args.max_passages}: give a number of passages, or 0 for all")
        if args.pairs_out:
            check_output_file(args.pairs_out, "--pairs-out")
        data = None
    elif args.pairs_from:
        data = pairs_from_corpus(args.pairs_from)
    else:
        data = read_training_files(args.train_files, columns, args.score_column)
    dev = read_training_file(args.dev, columns, args.score_column) if args.dev else None
    if passages is not None:  # (query, passage, negative) rows of whole passages: the corpus-adaptation recipe's bounds
        args.lora_layers = args.lora_layers or "below:7"
        args.max_seq_length = args.max_seq_length or 256
    layers = _layers(args.lora_layers)
    try:
        dims = [int(d) for d in split([args.matryoshka_dims])] if args.matryoshka_dims else None
    except ValueError:
        raise DataError(f"--matryoshka-dims {args.matryoshka_dims!r}: give sizes such as 64,128,256") from None
    tr.check_loss(("triplets" if args.hard_negatives else "pairs") if data is None else data.kind, args.loss)
    for flag in ("max_seq_length", "max_batch_tokens"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise DataError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: give a positive number of tokens")
    if data is not None:
        read_from = f" (columns {', '.join(data.columns)})" if data.columns else ""
        print(f"{len(data)} {data.kind} from {data.source}{read_from}", file=sys.stderr)
    else:
        sample = args.max_passages and min(args.max_passages, len(passages))
        which = f"a sample of {sample} of them (--max-passages; 0 for all)" if sample and sample < len(passages) else "them"
        print(f"{len(passages)} passages from {args.queries_from}: writing queries for {which}", file=sys.stderr)
    check_model(args.model, args.strategy)
    if args.generator:
        check_model(args.generator, None)
    log = logging.getLogger("echo_embeddings.training")  # the run's summary (frozen-state reuse) to stderr
    log.setLevel(logging.INFO)
    log.addHandler(logging.StreamHandler(sys.stderr))
    model = load_model(args.model, args.strategy, args.device, args.dtype or training_dtype(args.device))
    if data is None:
        data = tr.queries_from_corpus(
            model, passages, generator=args.generator, per_passage=args.queries_per_passage, max_passages=args.max_passages or None, top_k=args.filter_top_k,
            hard_negatives=args.hard_negatives, ranker=args.filter_with, pairs_out=args.pairs_out, filter_max_seq_length=args.max_seq_length, seed=args.seed, source=f"queries written for {args.queries_from}",
        )
        print(f"{len(data)} {data.kind} kept from the generated queries", file=sys.stderr)
    try:
        tr.train(
            model, data, args.out, dev=dev, epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
            learning_rate=args.learning_rate, lora=args.lora, lora_rank=args.lora_rank, lora_layers=layers, loss=args.loss, seed=args.seed,
            reuse_frozen=args.reuse_frozen, max_seq_length=args.max_seq_length, max_batch_tokens=args.max_batch_tokens,
            gradient_checkpointing=args.gradient_checkpointing, matryoshka_dims=dims,
        )
    except ValueError as error:
        raise DataError(str(error)) from error
    if args.merge and model[0].lora is not None:
        merge_lora(model)
        model.save(args.out)
    print(f"saved {args.out}: {'LoRA adapter on ' + model[0].source if model[0].lora else 'full weights'}")
