"""MTEB on a model from echo_embeddings.load, with tasks over local files (no download).

    python examples/mteb_local.py
    python examples/mteb_local.py --sts ../shared/data/stsb_dev.tsv --beir ../shared/data/scifact_dev --model gemma3-270m

Three MTEB tasks keep their metadata and scoring and get the local data instead of their download:
an STS task, a classification task and a retrieval task. Each runs with its task type's
template and instruction from the model's ``prompts`` (``--instructions`` adds the instruction
table, which ``load`` leaves out for zero-shot echo), and the results are filed under the model's
name and configuration in ``--results``. Tasks fetched from the Hugging Face Hub work the same way
(``mteb.evaluate(model, mteb.get_tasks(...))``) on a machine with network access.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mteb
from datasets import Dataset, DatasetDict
from mteb.cache import ResultCache

import echo_embeddings
from echo_embeddings.data import read_classification, read_retrieval, read_table
from echo_embeddings.models.prompts import TASK_INSTRUCTIONS

DATA = Path(__file__).resolve().parent / "data"
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--sts", default=str(DATA / "sts_pairs.tsv"), help="TSV with score, sentence1, sentence2 columns")
parser.add_argument("--classification", default=str(DATA / "intents.csv"), help="CSV with text, label columns (a stratified fifth is the test split)")
parser.add_argument("--beir", default=str(DATA / "mini_beir"), help="a folder in BEIR layout")
parser.add_argument("--model", default="smollm2-135m")
parser.add_argument("--strategy", default="echo")
parser.add_argument("--results", default="mteb-results", help="mteb's result cache folder")
parser.add_argument("--instructions", action="store_true", help="add the per-task-type instruction table (TASK_INSTRUCTIONS) to the model's prompts")
args = parser.parse_args()


def local(task_name: str, splits: dict, **selection) -> mteb.AbsTask:
    task = mteb.get_task(task_name, **selection)  # its metadata and scoring; the data below replaces its download
    subset = task.hf_subsets[0]
    task.dataset = {subset: splits}
    task.hf_subsets = [subset]
    task.data_loaded = True
    return task


pairs = read_table(args.sts, ["score", "sentence1", "sentence2"])
sts = local("STSBenchmark", DatasetDict({"test": Dataset.from_dict({"sentence1": [r[1] for r in pairs], "sentence2": [r[2] for r in pairs], "score": [float(r[0]) for r in pairs]})}))

data = read_classification(args.classification, None, ["text", "label"])
labels = {label: k for k, label in enumerate(sorted(set(data.train_labels)))}
classification = local(
    "Banking77Classification.v2",
    DatasetDict({
        "train": Dataset.from_dict({"text": data.train_texts, "label": [labels[x] for x in data.train_labels]}),
        "test": Dataset.from_dict({"text": data.test_texts, "label": [labels[x] for x in data.test_labels]}),
    }),
)

beir = read_retrieval(args.beir)
corpus = Dataset.from_dict({"id": list(beir.corpus), "title": [""] * len(beir.corpus), "text": list(beir.corpus.values())})
queries = Dataset.from_dict({"id": list(beir.queries), "text": list(beir.queries.values())})
retrieval = local("SciFact", {"test": {"corpus": corpus, "queries": queries, "relevant_docs": beir.qrels, "top_ranked": None}})

model = echo_embeddings.load(args.model, args.strategy)
if args.instructions:
    model.prompts.update(TASK_INSTRUCTIONS)
for task in (sts, classification, retrieval):
    kinds = (task.metadata.type, f"{task.metadata.type}-query")
    print(f"{task.metadata.type:15s} instruction: {next((model.prompts[k] for k in kinds if k in model.prompts), '(none)')!r}")

result = mteb.evaluate(model, [sts, classification, retrieval], cache=ResultCache(args.results), show_progress_bar=False)
for task_result in result.task_results:
    print(f"{task_result.task_name:28s} main score x 100 = {100 * task_result.get_score():.2f}")
print(f"results filed under {model.model_card_data.model_name} / {model.model_card_data.base_model_revision} in {args.results}/")
