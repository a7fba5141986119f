"""``echo-embeddings evaluate``: score models and strategies on local STS, retrieval and
classification data.

    echo-embeddings evaluate --model smollm2-135m --strategy mean,echo,prompteol \\
        --sts examples/data/sts_sample.tsv --out results/

Prints a table (tasks as rows, model/strategy as columns, an average row), and writes
``results.json`` and ``results.png`` to ``--out``. Embeddings are cached in ``--out/cache.sqlite``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..data import Classification, DataError, Retrieval, read_classification, read_retrieval, read_table, sample_corpus
from .common import DEFAULT_BATCH_SIZE, add_device, check_model, split

MAIN_METRIC = {"sts": "spearman", "retrieval": "ndcg@10", "classification": "accuracy"}


def add_parser(commands: Any) -> None:
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
    ev_parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="most texts per batch; the token budget usually decides")
    add_device(ev_parser)
    ev_parser.add_argument("--out", default="results", help="folder for results.json, results.png and the embedding cache")


def _load_tasks(args: argparse.Namespace) -> list[tuple[str, str, Any]]:
    """Read every task before any model work, so a bad file fails fast."""
    tasks: list[tuple[str, str, Any]] = []
    sts_columns = split([args.sts_columns])
    if len(sts_columns) != 3:
        raise DataError("--sts-columns needs three names: score, sentence1, sentence2")
    text_columns = [split([spec]) for spec in args.text_columns or ["text,label"]]
    if len(text_columns) == 1:
        text_columns *= len(args.classification)
    if len(text_columns) != len(args.classification) or any(len(c) != 2 for c in text_columns):
        raise DataError("--text-columns takes two names (text, label), once for all --classification files or once for each")
    for path in args.sts:
        rows = read_table(path, sts_columns)[: args.limit]
        tasks.append((Path(path).stem, "sts", rows))
    for folder in args.retrieval:
        task = read_retrieval(folder)
        if args.limit:
            keep = list(task.qrels)[: args.limit]
            task = Retrieval(task.name, task.corpus, {q: task.queries[q] for q in keep}, {q: task.qrels[q] for q in keep})
        if args.max_corpus:
            task = sample_corpus(task, args.max_corpus)
        tasks.append((task.name, "retrieval", task))
    for files, columns in zip(args.classification, text_columns):
        if len(files) > 2:
            raise DataError(f"--classification takes TRAIN [TEST], got {len(files)} files")
        task = read_classification(files[0], files[1] if len(files) == 2 else None, columns)
        if args.limit:
            task = Classification(task.name, task.train_texts[: args.limit], task.train_labels[: args.limit], task.test_texts[: args.limit], task.test_labels[: args.limit])
        tasks.append((task.name, "classification", task))
    if not tasks:
        raise DataError("no task given: pass --sts, --retrieval or --classification")
    return tasks


def _check_extras() -> None:
    """Fail before any model work when the evaluation extras are missing."""
    import importlib.util

    missing = [name for name in ("sklearn", "scipy", "matplotlib") if importlib.util.find_spec(name) is None]
    if missing:
        raise DataError(f"evaluation needs {', '.join(missing)}: pip install 'echo-embeddings[eval]'")


def run(args: argparse.Namespace) -> dict[str, Any]:
    _check_extras()
    tasks = _load_tasks(args)
    models, strategies = split(args.model), split([args.strategy])
    for model_name in models:
        for strategy in strategies:
            check_model(model_name, strategy)
    from .. import evaluation as ev
    from ..api import load

    out = Path(args.out)
    results: dict[str, dict[str, dict[str, float]]] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for model_name in models:
            model = None  # loaded once; each further strategy reconfigures the same weights
            for strategy in strategies:
                column = f"{model_name}/{strategy}" + (f"/{args.chunking}-{args.chunk_tokens}" if args.chunking else "")
                print(f"== {column}", file=sys.stderr)
                layer = {} if args.output_layer is None else {"output_layer": args.output_layer}
                try:
                    if model is None:
                        model = load(model_name, strategy, device=args.device, dtype=args.dtype, quantize=args.quantize, **layer)
                    else:
                        model[0].engine.configure(strategy=strategy, **layer)
                except ValueError as error:  # a layer the model does not have, an unknown strategy, ...
                    raise DataError(f"{column}: {error}") from error
                results[column] = _evaluate(ev, model, model_name, tasks, args, out)
            del model
    _summarize(caught)
    report = {"tasks": [f"{kind}:{name}" for name, kind, _ in tasks], "results": results, "main_metric": MAIN_METRIC}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(format_table(report))
    chart(report, out / "results.png")
    return report


def _evaluate(ev: Any, model: Any, model_name: str, tasks: list[tuple[str, str, Any]], args: argparse.Namespace, out: Path) -> dict[str, dict[str, float]]:
    """Every task's scores for the model as it is configured now (embeddings cached by its settings)."""
    settings = model[0].get_config_dict() | {"model": model_name, "version": __version__}
    cache = ev.EmbeddingCache(out / "cache.sqlite", settings)

    def encode(texts: list[str], task: str | None) -> np.ndarray:
        return model.encode(texts, task=task, batch_size=args.batch_size, normalize_embeddings=True, show_progress_bar=True)

    cached = cache.wrap(encode)
    chunked = None
    if args.chunking:
        chunk_settings = settings | {"chunking": args.chunking, "chunk_tokens": args.chunk_tokens}

        def encode_chunks(documents: list[str]) -> list[np.ndarray]:
            try:
                found = model.encode_chunks(
                    documents, chunk_tokens=args.chunk_tokens, chunking=args.chunking, batch_size=args.batch_size,
                    normalize_embeddings=True, show_progress_bar=True,
                )
            except ValueError as error:  # a last-token strategy, an empty document, ...
                raise DataError(f"--chunking {args.chunking}: {error}") from error
            return [np.stack([c.embedding for c in chunks]) for chunks in found]

        chunked = ev.EmbeddingCache(out / "cache.sqlite", chunk_settings).wrap_chunks(encode_chunks)
    scores: dict[str, dict[str, float]] = {}
    for name, kind, data in tasks:
        if kind == "sts":
            scores[f"{kind}:{name}"] = ev.evaluate_sts(cached, data)
        elif kind == "retrieval":
            scores[f"{kind}:{name}"] = ev.evaluate_retrieval(cached, data, chunked)
        else:
            scores[f"{kind}:{name}"] = ev.evaluate_classification(cached, data, runs=args.runs, max_train=args.max_train)
    return scores


def _summarize(caught: list[warnings.WarningMessage]) -> None:
    """Each distinct warning of the run once, with how often it came (small runs make scikit-learn
    repeat the same one for every classifier)."""
    counts = Counter((w.category.__name__, str(w.message).strip()) for w in caught)
    for (category, message), count in counts.items():
        times = f" ({count} times)" if count > 1 else ""
        print(f"warning{times}: {category}: {message}", file=sys.stderr)


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
