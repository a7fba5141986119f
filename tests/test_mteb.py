"""MTEB runs the model from echo_embeddings.load on tasks built from local data (no download):
scores equal our own scoring, each task type gets its instruction and template, results are filed
under the model's name and configuration, and a ModelMeta's loader rebuilds the model."""

from __future__ import annotations

import mteb
import numpy as np
import pytest
from datasets import Dataset, DatasetDict

import echo_embeddings
from echo_embeddings import evaluation as ev
from echo_embeddings.evaluation.mteb_meta import load_for_mteb, model_meta
from echo_embeddings.models.prompts import TASK_INSTRUCTIONS
from helpers import save_tiny_model

PAIRS = [("A cat sleeps.", "A cat is sleeping.", 5.0), ("Dogs run.", "Dogs are running.", 4.5), ("Stocks fell.", "The cat naps.", 0.0), ("It rains.", "Rain is falling.", 4.0)]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    return echo_embeddings.load(str(save_tiny_model(tmp_path_factory.mktemp("tiny") / "m")), "echo", device="cpu")


def sts_task():
    task = mteb.get_task("STSBenchmark")
    columns = {"sentence1": [a for a, _, _ in PAIRS], "sentence2": [b for _, b, _ in PAIRS], "score": [s for *_, s in PAIRS]}
    task.dataset = {"default": DatasetDict({"test": Dataset.from_dict(columns)})}
    task.data_loaded = True
    return task


def retrieval_task():
    task = mteb.get_task("SciFact")
    corpus = Dataset.from_dict({"id": ["d1", "d2"], "title": ["Cats", ""], "text": ["The cat sleeps.", "Stocks fell today."]})
    queries = Dataset.from_dict({"id": ["q1", "q2"], "text": ["Where is the cat?", "What did stocks do?"]})
    task.dataset = {"default": {"test": {"corpus": corpus, "queries": queries, "relevant_docs": {"q1": {"d1": 1}, "q2": {"d2": 1}}, "top_ranked": None}}}
    task.data_loaded = True
    return task


def classification_task():
    task = mteb.get_task("Banking77Classification.v2")
    texts = [f"{w} number {i}" for i in range(10) for w in ("card", "loan")]
    labels = [k for _ in range(10) for k in (0, 1)]
    task.dataset = {"default": DatasetDict({"train": Dataset.from_dict({"text": texts, "label": labels}), "test": Dataset.from_dict({"text": texts[:6], "label": labels[:6]})})}
    task.data_loaded = True
    return task


def sts_score(model_or_meta) -> float:
    return mteb.evaluate(model_or_meta, sts_task(), cache=None, show_progress_bar=False).task_results[0].scores["test"][0]["cosine_spearman"]


def test_sts_task_matches_our_own_scoring(model) -> None:
    def encode(texts: list[str], task_name: str | None) -> np.ndarray:
        return model.encode(texts, normalize_embeddings=True)

    ours = ev.evaluate_sts(encode, [[str(s), a, b] for a, b, s in PAIRS])
    assert sts_score(model) * 100 == pytest.approx(ours["spearman"], abs=1e-6)


def test_load_gives_the_instruction_table_to_presets_trained_with_instructions(model) -> None:
    assert model.prompts == {"query": "", "document": ""}  # zero-shot echo: measured better without
    checkpoint = echo_embeddings.load(model.load_arguments["model_name_or_path"], "echo-mistral-meantoken", device="cpu")
    assert {k: checkpoint.prompts[k] for k in TASK_INSTRUCTIONS} == TASK_INSTRUCTIONS


def test_each_task_type_runs_with_its_instruction_and_template(model, monkeypatch: pytest.MonkeyPatch) -> None:
    model = echo_embeddings.load(model.load_arguments["model_name_or_path"], "echo", device="cpu")
    model.prompts.update(TASK_INSTRUCTIONS)  # the opt-in line of the docs
    engine = model[0].engine
    calls: list[tuple] = []
    prepare = engine.prepare
    monkeypatch.setattr(engine, "prepare", lambda texts, task=None, instruction=None: (calls.append((task, instruction, texts[0])), prepare(texts, task, instruction))[1])
    seen = {}
    for task in (sts_task(), classification_task(), retrieval_task()):
        calls.clear()
        mteb.evaluate(model, task, cache=None, show_progress_bar=False)
        seen[task.metadata.type] = {(t, i) for t, i, _ in calls}
        assert not any(text.startswith(tuple(v for v in TASK_INSTRUCTIONS.values() if v)) for *_, text in calls)  # nothing prepended
    assert seen["STS"] == {("query", TASK_INSTRUCTIONS["STS"])}
    assert seen["Classification"] == {("query", TASK_INSTRUCTIONS["Classification"])}
    assert seen["Retrieval"] == {("query", TASK_INSTRUCTIONS["Retrieval-query"]), ("document", None)}

    def encode(texts: list[str], task_name: str | None) -> np.ndarray:
        return model.encode(texts, task="query", instruction=TASK_INSTRUCTIONS["STS"], normalize_embeddings=True)

    monkeypatch.undo()
    ours = ev.evaluate_sts(encode, [[str(s), a, b] for a, b, s in PAIRS])
    assert sts_score(model) * 100 == pytest.approx(ours["spearman"], abs=1e-6)


def test_results_are_filed_under_the_models_name_and_configuration(model, tmp_path) -> None:
    from mteb.cache import ResultCache

    revision = model.model_card_data.base_model_revision
    assert model.model_card_data.model_name == "echo-embeddings/m-echo" and revision.startswith("echo-")
    mteb.evaluate(model, sts_task(), cache=ResultCache(tmp_path), show_progress_bar=False)
    assert (tmp_path / "results" / "echo-embeddings__m-echo" / revision / "STSBenchmark.json").is_file()
    folder = model.load_arguments["model_name_or_path"]
    again = echo_embeddings.load(folder, "echo", device="cpu")
    other_layer = echo_embeddings.load(folder, "echo", device="cpu", output_layer=1)
    assert again.model_card_data.base_model_revision == revision  # the same configuration, the same folder
    assert other_layer.model_card_data.base_model_revision != revision
    again.prompts.update(TASK_INSTRUCTIONS)  # a change after loading shows in the revision mteb reads
    assert again.model_card_data.base_model_revision not in (revision, other_layer.model_card_data.base_model_revision)
    model.save(str(tmp_path / "saved-echo"))
    assert echo_embeddings.load(str(tmp_path / "saved-echo"), device="cpu").model_card_data.model_name == "echo-embeddings/saved-echo"


def test_model_meta_describes_the_model_and_its_loader_rebuilds_it(model, tmp_path) -> None:
    meta = model_meta(model)
    assert (meta.name, meta.revision) == (model.model_card_data.model_name, model.model_card_data.base_model_revision)
    assert (meta.embed_dim, meta.max_tokens, meta.use_instructions) == (32, model.max_seq_length, False)
    assert meta.similarity_fn_name.value == "cosine" and meta.n_parameters == sum(p.numel() for p in model.parameters())
    assert sts_score(meta) == pytest.approx(sts_score(model), abs=1e-6)  # mteb loads it through our loader
    with pytest.raises(ValueError, match="not the revision"):
        load_for_mteb(meta.name, revision="echo-000000000000", **meta.loader_kwargs)
    changed = echo_embeddings.load(model.load_arguments["model_name_or_path"], "echo", device="cpu")
    changed[0].output_layer = 1
    with pytest.raises(ValueError, match="changed since it was loaded"):
        model_meta(changed)
    instructed = echo_embeddings.load(model.load_arguments["model_name_or_path"], "echo", device="cpu")
    instructed.prompts.update(TASK_INSTRUCTIONS)  # prompts travel with the loader
    meta = model_meta(instructed)
    assert meta.use_instructions and meta.revision == instructed.model_card_data.base_model_revision != model_meta(model).revision
    assert sts_score(meta) == pytest.approx(sts_score(instructed), abs=1e-6)
