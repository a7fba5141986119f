"""MTEB on the model from echo_embeddings.load, with a task built from a local file (no download).

    python examples/mteb_local.py ../shared/data/stsb_dev.tsv --limit 200

Tasks fetched from the Hugging Face Hub work the same way (``mteb.evaluate(model, mteb.get_tasks(...))``)
on a machine with network access; queries and documents go through the echo query/document templates.
"""

from __future__ import annotations

import argparse

import mteb
from datasets import Dataset, DatasetDict

import echo_embeddings
from echo_embeddings.data import read_table

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("pairs", help="TSV/CSV with score, sentence1, sentence2 columns")
parser.add_argument("--model", default="smollm2-135m")
parser.add_argument("--strategy", default="echo")
parser.add_argument("--limit", type=int, default=200)
args = parser.parse_args()

rows = read_table(args.pairs, ["score", "sentence1", "sentence2"])[: args.limit]
task = mteb.get_task("STSBenchmark")  # its metadata and scoring; the data below replaces its download
task.dataset = {"default": DatasetDict({"test": Dataset.from_dict({"sentence1": [r[1] for r in rows], "sentence2": [r[2] for r in rows], "score": [float(r[0]) for r in rows]})})}
task.data_loaded = True

model = echo_embeddings.load(args.model, args.strategy)
result = mteb.evaluate(model, task, cache=None)
print(f"{args.model}/{args.strategy}: cosine Spearman x100 = {100 * result.task_results[0].scores['test'][0]['cosine_spearman']:.2f}")
