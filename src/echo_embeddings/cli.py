"""The command line: ``embed`` a large corpus to a ``.npy`` file, ``evaluate`` strategies on local data.

    echo-embeddings embed corpus.txt --out vectors.npy --model smollm2-135m --strategy echo

reads one text per line (or ``--column`` of a TSV/CSV) lazily and writes float32 rows in input
order, so memory stays bounded for any corpus size; ``numpy.load(out, mmap_mode="r")`` reads it.

    echo-embeddings evaluate --model smollm2-135m --strategy mean,echo,prompteol \\
        --sts ../shared/data/stsb_dev.tsv --classification ../shared/data/banking77_train.csv \\
        --out results/

Prints a table (tasks as rows, model/strategy as columns, an average row), and writes
``results.json`` and ``results.png`` to ``--out``. Embeddings are cached in ``--out/cache.sqlite``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import evaluation as ev

MAIN_METRIC = {"sts": "spearman", "retrieval": "ndcg@10", "classification": "accuracy"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="echo-embeddings", description="Training-free sentence embeddings from causal LMs.")
    commands = parser.add_subparsers(dest="command", required=True)
    embed = commands.add_parser(
        "embed", help="embed a text file into a .npy file, or with --ray files and folders into Parquet on a Ray cluster"
    )
    embed.add_argument("input", nargs="+", help="text file, TSV or CSV ('-' reads stdin); with --ray also JSONL, Parquet and folders")
    embed.add_argument("--out", required=True, help="the .npy file to write (float32 [texts, dim], input order); with --ray a Parquet folder")
    embed.add_argument("--column", default=None, help="read this column (a TSV/CSV with a header; with --ray also JSONL/Parquet; default there: text)")
    ray_group = embed.add_argument_group("scale-out on Ray Data")
    ray_group.add_argument("--ray", action="store_true", help="run on Ray: a local one, or the cluster at --address / $RAY_ADDRESS")
    ray_group.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else start a local Ray)")
    ray_group.add_argument("--actors", type=int, default=1, help="model replicas (Ray actors); one per GPU on a cluster (default: %(default)s)")
    ray_group.add_argument("--cpus-per-actor", type=float, default=1, help="CPUs (and so torch threads) per actor (default: %(default)s)")
    ray_group.add_argument("--gpus-per-actor", type=float, default=0, help="GPUs reserved per actor (default: %(default)s)")
    ray_group.add_argument("--id-column", default=None, help="take row ids from this column (default: file name and row number)")
    ray_group.add_argument("--keep-text", action="store_true", help="write the text column next to id and embedding")
    ray_group.add_argument("--overwrite", action="store_true", help="replace what the --out folder holds (by default it must be new or empty)")
    embed.add_argument("--model", default=None, help="alias, id, folder or .gguf (default: the embedded smollm2-135m)")
    embed.add_argument("--strategy", default=None, help="preset or template (default: echo, or a saved model's own)")
    embed.add_argument("--task", choices=["sentence", "query", "document"], default="sentence", help="which template (default: %(default)s)")
    embed.add_argument("--normalize", action="store_true", help="unit-length vectors")
    embed.add_argument("--batch-size", type=int, default=256, help="most texts per batch (default: %(default)s); the token budget usually decides")
    embed.add_argument("--max-batch-tokens", type=int, default=None, help="token budget per batch (default: 2048 on CPU, 32768 on CUDA)")
    embed.add_argument("--chunk-size", type=int, default=4096, help="texts read and sorted at a time (bounds memory)")
    embed.add_argument("--device", default=None)
    whiten = commands.add_parser("fit-whitening", help="fit whitening on an unlabelled corpus and save the model with it")
    whiten.add_argument("corpus", help="text file (one text per line) or a TSV/CSV with --column; no labels are used")
    whiten.add_argument("--model", default=None, help="alias, id, folder, .gguf or saved echo model (default: the embedded smollm2-135m)")
    whiten.add_argument("--strategy", default=None, help="preset or template (default: echo, or a saved model's own)")
    whiten.add_argument("--out", required=True, help="folder to save the model with its whitening module")
    whiten.add_argument("--dim", type=int, default=None, help="kept dimensions (default: 128, or the embedding size if smaller)")
    whiten.add_argument("--kind", choices=["pca", "center"], default="pca", help="PCA whitening or centering only (default: %(default)s)")
    whiten.add_argument("--column", default=None, help="read this column of a TSV/CSV with a header")
    whiten.add_argument("--task", choices=["sentence", "query", "document"], default="sentence", help="template the corpus is embedded with (default: %(default)s)")
    whiten.add_argument("--device", default=None)
    tr = commands.add_parser("train", help="fine-tune an echo model on labelled pairs, triplets, or pairs made from your corpus")
    tr.add_argument("train_files", nargs="*", metavar="TRAIN_FILE", help="TSV/CSV/JSONL: scored pairs (sentence1, sentence2, score), pairs or triplets")
    tr.add_argument("--pairs-from", default=None, metavar="CORPUS", help="no labels: make pairs from a BEIR corpus.jsonl (title, text) or a text file (neighbouring paragraphs)")
    tr.add_argument("--model", default=None, help="alias, id, folder or .gguf (default: the embedded smollm2-135m)")
    tr.add_argument("--strategy", default=None, help="preset or template (default: echo)")
    tr.add_argument("--out", required=True, help="folder for the trained model (checkpoints in OUT/checkpoints)")
    tr.add_argument("--dev", default=None, help="a file of the same shape, evaluated during training")
    tr.add_argument("--epochs", type=float, default=1.0)
    tr.add_argument("--max-steps", type=int, default=-1, help="stop after N steps (overrides --epochs)")
    tr.add_argument("--batch-size", type=int, default=16, help="pairs per step (default: %(default)s)")
    tr.add_argument("--learning-rate", type=float, default=None, help="default 2e-4 with LoRA, 2e-5 without")
    tr.add_argument("--lora", action=argparse.BooleanOptionalAction, default=True, help="train a LoRA adapter (default) or every weight")
    tr.add_argument("--lora-rank", type=int, default=16)
    tr.add_argument(
        "--lora-layers", default=None,
        help="decoder layers to adapt: e.g. 20-29 or 0,5,9, or below:N for the N layers below the pooled hidden state (default: all)",
    )
    tr.add_argument("--merge", action="store_true", help="save full weights with the adapter merged in (default: the adapter alone)")
    tr.add_argument("--text-columns", default=None, help="text columns, two or three, e.g. sentence1,sentence2 (default: recognised names)")
    tr.add_argument("--score-column", default=None, help="score column of scored pairs (default: score, if present)")
    tr.add_argument("--loss", default=None, choices=["cosent", "angle", "cosine", "mnrl", "cached-mnrl"], help="override the loss chosen from the data")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument(
        "--reuse-frozen", action=argparse.BooleanOptionalAction, default=True,
        help="keep each text's states below the lowest trained layer and reuse them in later epochs (default: on)",
    )
    tr.add_argument(
        "--max-seq-length", type=int, default=None, metavar="N",
        help="cut training prompts to N tokens, with a warning (long documents train faster); the saved model keeps its own",
    )
    tr.add_argument(
        "--max-batch-tokens", type=int, default=None, metavar="N",
        help="token-budget batches: at most N prompt tokens (and --batch-size rows) a step, rows of similar length together",
    )
    tr.add_argument("--gradient-checkpointing", action="store_true", help="recompute the trained layers' activations in backward (less memory)")
    tr.add_argument("--device", default=None)
    ev_parser = commands.add_parser("evaluate", help="score models and strategies on local STS, retrieval and classification data")
    ev_parser.add_argument("--model", action="append", required=True, help="alias, id, folder or .gguf; repeat or comma-separate")
    ev_parser.add_argument("--strategy", default="mean,echo,prompteol", help="comma-separated strategies (default: %(default)s)")
    ev_parser.add_argument("--sts", action="append", default=[], metavar="FILE", help="pair file (TSV/CSV); repeatable")
    ev_parser.add_argument("--sts-columns", default="score,sentence1,sentence2", help="score and sentence columns (default: %(default)s)")
    ev_parser.add_argument("--retrieval", action="append", default=[], metavar="DIR", help="BEIR folder; repeatable")
    ev_parser.add_argument("--classification", action="append", nargs="+", default=[], metavar="FILE", help="TRAIN [TEST]; one file is split 80/20")
    ev_parser.add_argument(
        "--text-columns", action="append", default=[], help="text and label columns (default text,label); repeat to match each --classification"
    )
    ev_parser.add_argument("--limit", type=int, default=None, help="use at most this many rows (pairs, texts or queries) per task")
    ev_parser.add_argument(
        "--max-corpus", type=int, default=None, help="retrieval: keep every judged document and random others (seed 0) up to this many"
    )
    ev_parser.add_argument(
        "--chunking", choices=["late", "naive"], default=None,
        help="retrieval: embed documents as chunks, late (pooled from the whole document) or naive (each chunk alone); a document scores as its best chunk",
    )
    ev_parser.add_argument("--chunk-tokens", type=int, default=256, help="chunk size in tokens with --chunking (default: %(default)s)")
    ev_parser.add_argument("--output-layer", type=int, default=None, help="hidden state to pool for every model and strategy (default: each one's own)")
    ev_parser.add_argument("--runs", type=int, default=3, help="classification runs, each with its own seed and training sample")
    ev_parser.add_argument("--max-train", type=int, default=2000, help="training sample cap per classification run")
    ev_parser.add_argument("--batch-size", type=int, default=256, help="most texts per batch; the token budget usually decides")
    ev_parser.add_argument("--device", default=None)
    ev_parser.add_argument("--out", default="results", help="folder for results.json, results.png and the embedding cache")
    return parser


def _split(values: list[str]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _load_tasks(args: argparse.Namespace) -> list[tuple[str, str, Any]]:
    """Read every task before any model work, so a bad file fails fast."""
    tasks: list[tuple[str, str, Any]] = []
    sts_columns = _split([args.sts_columns])
    if len(sts_columns) != 3:
        raise ev.DataError("--sts-columns needs three names: score, sentence1, sentence2")
    text_columns = [_split([spec]) for spec in args.text_columns or ["text,label"]]
    if len(text_columns) == 1:
        text_columns *= len(args.classification)
    if len(text_columns) != len(args.classification) or any(len(c) != 2 for c in text_columns):
        raise ev.DataError("--text-columns takes two names (text, label), once for all --classification files or once for each")
    for path in args.sts:
        rows = ev.read_table(path, sts_columns)[: args.limit]
        tasks.append((Path(path).stem, "sts", rows))
    for folder in args.retrieval:
        task = ev.read_retrieval(folder)
        if args.limit:
            keep = list(task.qrels)[: args.limit]
            task = ev.Retrieval(task.name, task.corpus, {q: task.queries[q] for q in keep}, {q: task.qrels[q] for q in keep})
        if args.max_corpus:
            task = ev.sample_corpus(task, args.max_corpus)
        tasks.append((task.name, "retrieval", task))
    for files, columns in zip(args.classification, text_columns):
        if len(files) > 2:
            raise ev.DataError(f"--classification takes TRAIN [TEST], got {len(files)} files")
        task = ev.read_classification(files[0], files[1] if len(files) == 2 else None, columns)
        if args.limit:
            task = ev.Classification(task.name, task.train_texts[: args.limit], task.train_labels[: args.limit], task.test_texts[: args.limit], task.test_labels[: args.limit])
        tasks.append((task.name, "classification", task))
    if not tasks:
        raise ev.DataError("no task given: pass --sts, --retrieval or --classification")
    return tasks


def _check_extras() -> None:
    """Fail before any model work when the evaluation extras are missing."""
    import importlib.util

    missing = [name for name in ("sklearn", "scipy", "matplotlib") if importlib.util.find_spec(name) is None]
    if missing:
        raise ev.DataError(f"evaluation needs {', '.join(missing)}: pip install 'echo-embeddings[eval]'")


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    import echo_embeddings

    _check_extras()
    tasks = _load_tasks(args)
    out = Path(args.out)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for model_name in _split(args.model):
        for strategy in _split([args.strategy]):
            column = f"{model_name}/{strategy}" + (f"/{args.chunking}-{args.chunk_tokens}" if args.chunking else "")
            print(f"== {column}", file=sys.stderr)
            layer = {} if args.output_layer is None else {"output_layer": args.output_layer}
            try:
                model = echo_embeddings.load(model_name, strategy, device=args.device, **layer)
            except ValueError as error:  # a layer the model does not have, an unknown strategy, ...
                raise ev.DataError(f"{column}: {error}") from error
            module = model[0]
            settings = module.get_config_dict() | {"model": model_name, "version": echo_embeddings.__version__}
            cache = ev.EmbeddingCache(out / "cache.sqlite", settings)

            def encode(texts: list[str], task: str | None, model: Any = model) -> np.ndarray:
                return model.encode(texts, task=task, batch_size=args.batch_size, normalize_embeddings=True, show_progress_bar=True)

            cached = cache.wrap(encode)
            chunked = None
            if args.chunking:
                chunk_settings = settings | {"chunking": args.chunking, "chunk_tokens": args.chunk_tokens}

                def encode_chunks(documents: list[str], model: Any = model) -> list[np.ndarray]:
                    try:
                        found = model.encode_chunks(
                            documents, chunk_tokens=args.chunk_tokens, chunking=args.chunking, batch_size=args.batch_size,
                            normalize_embeddings=True, show_progress_bar=True,
                        )
                    except ValueError as error:  # a last-token strategy, an empty document, ...
                        raise ev.DataError(f"--chunking {args.chunking}: {error}") from error
                    return [np.stack([c.embedding for c in chunks]) for chunks in found]

                chunked = ev.EmbeddingCache(out / "cache.sqlite", chunk_settings).wrap_chunks(encode_chunks)
            results[column] = {}
            for name, kind, data in tasks:
                if kind == "sts":
                    scores = ev.evaluate_sts(cached, data)
                elif kind == "retrieval":
                    scores = ev.evaluate_retrieval(cached, data, chunked)
                else:
                    scores = ev.evaluate_classification(cached, data, runs=args.runs, max_train=args.max_train)
                results[column][f"{kind}:{name}"] = scores
            del model, module
    report = {"tasks": [f"{kind}:{name}" for name, kind, _ in tasks], "results": results, "main_metric": MAIN_METRIC}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(format_table(report))
    chart(report, out / "results.png")
    return report


def _main_scores(report: dict[str, Any]) -> tuple[list[str], list[str], np.ndarray]:
    columns = list(report["results"])
    rows = report["tasks"]
    values = np.array([[report["results"][c][t][MAIN_METRIC[t.split(":")[0]]] for c in columns] for t in rows])
    return rows, columns, values


def format_table(report: dict[str, Any]) -> str:
    """Tasks as rows (with their main metric), model/strategy as columns, then the average."""
    rows, columns, values = _main_scores(report)
    labels = [f"{t} ({MAIN_METRIC[t.split(':')[0]]})" for t in rows] + ["average"]
    width = max(len(label) for label in labels)
    col = max(8, *(len(c) for c in columns))
    lines = [" " * width + "  " + "  ".join(f"{c:>{col}}" for c in columns)]
    for label, line in zip(labels, [*values, values.mean(axis=0)]):
        lines.append(f"{label:<{width}}  " + "  ".join(f"{v:>{col}.2f}" for v in line))
    return "\n".join(lines)


def chart(report: dict[str, Any], path: Path) -> None:
    """A grouped bar chart of the main metric per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, columns, values = _main_scores(report)
    figure, axes = plt.subplots(figsize=(max(6, 1.6 * len(rows) * max(1, len(columns)) / 2), 4.5))
    width = 0.8 / len(columns)
    positions = np.arange(len(rows))
    for i, column in enumerate(columns):
        axes.bar(positions + i * width - 0.4 + width / 2, values[:, i], width, label=column)
    axes.set_xticks(positions, [f"{t}\n{MAIN_METRIC[t.split(':')[0]]}" for t in rows], fontsize=8)
    axes.set_ylabel("score x 100")
    axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def read_texts(path: str, column: str | None = None) -> Iterator[str]:
    """Texts read lazily: whole lines (without their newline), or one column of a delimited file."""
    handle = sys.stdin if path == "-" else open(path, encoding="utf-8", newline="")  # noqa: SIM115
    try:
        if column is None:
            for line in handle:
                yield line.rstrip("\r\n")
            return
        delimiter = "," if path.endswith(".csv") else "\t"
        reader = csv.DictReader(handle, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL)
        if column not in (reader.fieldnames or []):
            raise ev.DataError(f"{path} has no column {column!r}; its columns are {reader.fieldnames}")
        for row in reader:
            yield row[column] or ""
    finally:
        if handle is not sys.stdin:
            handle.close()


def load_model(name: str | None, strategy: str | None, device: str | None) -> Any:
    """The model a command runs: a saved echo model keeps its own strategy (and its module list)."""
    import echo_embeddings

    try:
        return echo_embeddings.load(name or echo_embeddings.DEFAULT_MODEL, strategy, device=device)
    except ValueError as error:  # a saved model given a --strategy, an unknown strategy, ...
        raise ev.DataError(str(error)) from error


def embed_on_ray(args: argparse.Namespace) -> None:
    import os

    from echo_embeddings import ray as echo_ray

    ray = echo_ray._require_ray()
    options: dict[str, Any] = {"model": args.model, "strategy": args.strategy, "normalize": args.normalize, "batch_size": args.batch_size}
    if args.task != "sentence":
        options["task"] = args.task
    if args.device:
        options["device"] = args.device
    if args.max_batch_tokens is not None:
        options["max_batch_tokens"] = args.max_batch_tokens
    ray.init(address=args.address or os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True)
    try:
        rows = echo_ray.embed_corpus(
            args.input, args.out, actors=args.actors, cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor, text_column=args.column or "text",
            id_column=args.id_column, keep_text=args.keep_text, overwrite=args.overwrite, **options,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        raise ev.DataError(str(error)) from error
    print(f"wrote {rows} rows (id, embedding{', text' if args.keep_text else ''}) as Parquet to {args.out}")


def embed(args: argparse.Namespace) -> None:
    from echo_embeddings.streaming import save_npy

    if args.ray:
        return embed_on_ray(args)
    if len(args.input) != 1:
        raise ev.DataError(f"embed takes one input file without --ray, got {len(args.input)}")
    args.input = args.input[0]
    if not args.input == "-" and not Path(args.input).is_file():
        raise ev.DataError(f"no such file: {args.input}")
    model = load_model(args.model, args.strategy, args.device)
    if args.max_batch_tokens is not None:
        model[0].max_batch_tokens = args.max_batch_tokens
    task = {"task": args.task} if args.task != "sentence" else {}
    chunks = model.stream(
        read_texts(args.input, args.column),
        chunk_size=args.chunk_size,
        batch_size=args.batch_size,
        normalize_embeddings=args.normalize,
        show_progress_bar=True,
        **task,
    )
    rows, dim = save_npy(chunks, args.out)
    print(f"wrote {rows} x {dim} float32 to {args.out}")


def fit_whitening_command(args: argparse.Namespace) -> None:
    from echo_embeddings.whitening import fit_whitening

    if not Path(args.corpus).is_file():
        raise ev.DataError(f"no such file: {args.corpus}")
    model = load_model(args.model, args.strategy, args.device)
    texts = (t for t in read_texts(args.corpus, args.column) if t.strip())
    try:
        fit_whitening(model, texts, args.dim, kind=args.kind, task=None if args.task == "sentence" else args.task, show_progress_bar=True)
    except ValueError as error:
        raise ev.DataError(str(error)) from error
    model.save(args.out)
    print(f"saved {args.out}: {model[-1]}")


def _layers(spec: str | None) -> list[int] | str | None:
    if not spec:
        return None
    if spec.startswith("below:"):
        from .training import below_count

        try:
            below_count(spec)
        except ValueError as error:
            raise ev.DataError(f"--lora-layers: {error}") from None
        return spec  # resolved against the model's pooled hidden state once it is loaded
    try:
        out: list[int] = []
        for part in spec.split(","):
            first, _, last = part.partition("-")
            out.extend(range(int(first), int(last or first) + 1))
        return out
    except ValueError:
        raise ev.DataError(f"--lora-layers {spec!r}: give layer numbers and ranges, e.g. 20-29 or 0,5,9, or below:N") from None


def train_command(args: argparse.Namespace) -> None:
    from . import merge_lora
    from . import training as tr

    if bool(args.train_files) == bool(args.pairs_from):
        raise ev.DataError("give training files or --pairs-from CORPUS (one of the two)")
    columns = _split([args.text_columns]) if args.text_columns else None
    # Every file is read and checked before the model loads.
    data = tr.pairs_from_corpus(args.pairs_from) if args.pairs_from else tr.read_training_files(args.train_files, columns, args.score_column)
    dev = tr.read_training_file(args.dev, columns, args.score_column) if args.dev else None
    layers = _layers(args.lora_layers)
    tr.check_loss(data.kind, args.loss)
    for flag in ("max_seq_length", "max_batch_tokens"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ev.DataError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: give a positive number of tokens")
    print(f"{len(data)} {data.kind} from {data.source}", file=sys.stderr)
    log = logging.getLogger("echo_embeddings.training")  # the run's summary (frozen-state reuse) to stderr
    log.setLevel(logging.INFO)
    log.addHandler(logging.StreamHandler(sys.stderr))
    model = load_model(args.model, args.strategy, args.device)
    try:
        tr.train(
            model, data, args.out, dev=dev, epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
            learning_rate=args.learning_rate, lora=args.lora, lora_rank=args.lora_rank, lora_layers=layers, loss=args.loss, seed=args.seed,
            reuse_frozen=args.reuse_frozen, max_seq_length=args.max_seq_length, max_batch_tokens=args.max_batch_tokens,
            gradient_checkpointing=args.gradient_checkpointing,
        )
    except ValueError as error:
        raise ev.DataError(str(error)) from error
    if args.merge and model[0].lora is not None:
        merge_lora(model)
        model.save(args.out)
    print(f"saved {args.out}: {'LoRA adapter on ' + model[0].source if model[0].lora else 'full weights'}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"embed": embed, "evaluate": evaluate, "fit-whitening": fit_whitening_command, "train": train_command}
    try:
        commands[args.command](args)
    except ev.DataError as error:
        print(f"echo-embeddings: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
