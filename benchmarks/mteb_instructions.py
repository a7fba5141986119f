"""MTEB with and without the per-task instruction table, side by side, on local data.

    python benchmarks/mteb_instructions.py --out benchmarks/results/mteb_instructions.json
    python benchmarks/mteb_instructions.py --models smollm2-135m --quick

Every score comes from ``mteb.evaluate`` on a model from ``echo_embeddings.load``, with MTEB
tasks whose data is replaced by the development files in ``shared/data`` (no download): STS-B dev
and SICK trial (STS, Spearman x 100), Banking77 and AmazonCounterfactual (Classification,
accuracy x 100, mteb's 10 undersampled experiments), Banking77 test texts as a clustering task
(v-measure x 100) and SciFact dev over 300 abstracts (Retrieval, nDCG@10 x 100). Two rows per
model: the instruction table (``TASK_INSTRUCTIONS``: each task type's instruction in the query
template, documents in the document template) against ``load``'s default for ``echo``, empty
``query``/``document`` prompts only (symmetric tasks in the sentence template, retrieval queries
with the default instruction).
The Banking77 test split is 1,000 texts drawn (seed 0, stratified) from banking77_train.csv; the
training split is 16 other texts per label. AmazonCounterfactual's 335 validation rows are split
200 / 135 (seed 0, stratified).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import time
from pathlib import Path

import mteb
import numpy as np
from datasets import Dataset, DatasetDict

import echo_embeddings
from echo_embeddings.data import read_retrieval, read_table, sample_corpus
from echo_embeddings.models.prompts import TASK_INSTRUCTIONS, TASK_NAMES_ONLY

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
NAMES = {"smollm2-135m": "SmolLM2-135M", "gemma3-270m": "Gemma 3 270M"}


def with_data(task, splits: dict[str, Dataset] | dict, subset: str = "default"):
    """An MTEB task (its metadata, prompts lookup and scoring) over local data instead of its download."""
    task.dataset = {subset: DatasetDict(splits) if all(isinstance(v, Dataset) for v in splits.values()) else splits}
    task.hf_subsets = [subset]
    task.data_loaded = True
    return task


def sts(name: str, file: str, limit: int | None):
    rows = read_table(DATA / file, ["score", "sentence1", "sentence2"])[:limit]
    columns = {"sentence1": [r[1] for r in rows], "sentence2": [r[2] for r in rows], "score": [float(r[0]) for r in rows]}
    return with_data(mteb.get_task(name), {"test": Dataset.from_dict(columns)})


def stratified(labels: list[str], size: int, seed: int = 0) -> np.ndarray:
    """Indices of a ``size`` sample in which every label keeps its share (at least one each)."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    picked = []
    for members in by_label.values():
        share = max(1, round(size * len(members) / len(labels)))
        picked.extend(rng.choice(members, min(share, len(members)), replace=False).tolist())
    return np.array(sorted(picked))


def banking(limit: int):
    import csv

    with open(DATA / "banking77_train.csv", newline="", encoding="utf-8") as f:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(f)]
    labels = [c for _, c in rows]
    test = set(stratified(labels, limit).tolist())
    rng = np.random.default_rng(1)
    train: list[int] = []
    for label in sorted(set(labels)):
        members = [i for i, c in enumerate(labels) if c == label and i not in test]
        train.extend(rng.choice(members, min(16, len(members)), replace=False).tolist())
    ids = {c: k for k, c in enumerate(sorted(set(labels)))}

    def split(indices) -> Dataset:
        return Dataset.from_dict({"text": [rows[i][0] for i in indices], "label": [ids[rows[i][1]] for i in indices]})

    classification = with_data(mteb.get_task("Banking77Classification.v2"), {"train": split(sorted(train)), "test": split(sorted(test))})
    clustering = mteb.get_task("TwentyNewsgroupsClustering.v2")  # a v2 clustering task: its scoring, our texts
    clustering.max_fraction_of_documents_to_embed = None
    clustering.max_document_to_embed = len(test)
    texts = [rows[i][0] for i in sorted(test)]
    with_data(clustering, {"test": Dataset.from_dict({"sentences": texts, "labels": [rows[i][1] for i in sorted(test)]})})
    return classification, clustering


def counterfactual():
    rows = read_table(DATA / "amazon_counterfactual_valid.tsv", ["sentence", "is_counterfactual"])
    labels = [r[1] for r in rows]
    train = set(stratified(labels, 200).tolist())

    def split(keep) -> Dataset:
        chosen = [r for i, r in enumerate(rows) if keep(i)]
        return Dataset.from_dict({"text": [r[0] for r in chosen], "label": [int(r[1]) for r in chosen]})

    task = mteb.get_task("AmazonCounterfactualClassification", languages=["eng"], eval_splits=["test"])
    return with_data(task, {"train": split(lambda i: i in train), "test": split(lambda i: i not in train)}, subset="en")


def scifact(corpus_size: int):
    task = sample_corpus(read_retrieval(DATA / "scifact_dev"), corpus_size)
    raw = {json.loads(line)["_id"]: json.loads(line) for line in (DATA / "scifact_dev" / "corpus.jsonl").read_text(encoding="utf-8").splitlines()}
    ids = list(task.corpus)
    corpus = Dataset.from_dict({"id": ids, "title": [raw[i].get("title", "") for i in ids], "text": [raw[i]["text"] for i in ids]})
    judged = [q for q in task.queries if q in task.qrels]
    queries = Dataset.from_dict({"id": judged, "text": [task.queries[q] for q in judged]})
    relevant = {q: task.qrels[q] for q in judged}
    return with_data(mteb.get_task("SciFact"), {"test": {"corpus": corpus, "queries": queries, "relevant_docs": relevant, "top_ranked": None}})


COLUMNS = ["STS-B dev", "SICK trial", "Banking77", "AmazonCounterfactual", "Banking77 clustering", "SciFact", "mean"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m")
    parser.add_argument("--quick", action="store_true", help="a few hundred texts per task, to try the script")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    limit = 100 if args.quick else None
    classification, clustering = banking(200 if args.quick else 1000)
    tasks = [
        sts("STSBenchmark", "stsb_dev.tsv", limit),
        sts("SICK-R", "sick_trial.tsv", limit),
        classification,
        counterfactual(),
        clustering,
        scifact(100 if args.quick else 300),
    ]
    rows = []
    for name in args.models.split(","):
        model = echo_embeddings.load(name, "echo")
        default = dict(model.prompts)
        table = {**TASK_NAMES_ONLY, **TASK_INSTRUCTIONS}
        for label, prompts in (("task instructions (TASK_INSTRUCTIONS)", table), ("no task instructions (load's default)", default)):
            model.prompts = prompts
            started = time.perf_counter()
            result = mteb.evaluate(model, tasks, cache=None, show_progress_bar=False, encode_kwargs={"batch_size": 256})
            scores = {r.task_name: 100 * r.get_score() for r in result.task_results}
            values = [scores[t.metadata.name] for t in tasks]
            cells = [{"value": v, "decimals": 2} for v in values] + [{"value": float(np.mean(values)), "decimals": 2}]
            rows.append({"label": f"{NAMES.get(name, name)}, {label}", "cells": cells})
            print(f"{rows[-1]['label']:60s} " + " ".join(f"{c['value']:8.2f}" for c in cells) + f"  ({time.perf_counter() - started:.0f} s)", flush=True)
        model.prompts = default
    for name in args.models.split(","):
        with_table, without = (r for r in rows if r["label"].startswith(NAMES.get(name, name)))
        changes = [a["value"] - b["value"] for a, b in zip(with_table["cells"], without["cells"])]
        print(f"{NAMES.get(name, name)}: change with instructions " + " ".join(f"{c:+.2f}" for c in changes))
    if args.out:
        versions = {p: importlib.metadata.version(p) for p in ("mteb", "torch", "transformers", "sentence-transformers")}
        result = {
            "title": "MTEB tasks on local data, with and without the task instructions",
            "row_header": "model, prompts",
            "columns": COLUMNS,
            "rows": rows,
            "unit": f"x 100: Spearman (STS), accuracy (classification), v-measure (clustering), nDCG@10 (SciFact, 300 abstracts); echo; dtype auto; versions {versions}",
            "command": "python benchmarks/mteb_instructions.py --out benchmarks/results/mteb_instructions.json",
        }
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
