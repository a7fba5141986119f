"""Fine-tuning: LoRA through peft's own API, adapter-only saves, merging, the trainer on echo
templates, training files checked before any model work, and the train command."""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import pytest
import torch
from peft import LoraConfig

import echo_embeddings
from echo_embeddings import cli, training
from echo_embeddings.data import DataError
from helpers import save_lora_model, save_tiny_model

TEXTS = ["A man is playing a guitar.", "Dogs run in the park.", "The market fell sharply."]


def scored_rows(n: int = 16) -> list[tuple]:
    similar = [(f"A dog runs in the park {i}.", f"A dog is running in a park {i}.", 5.0) for i in range(n)]
    different = [(f"The market fell {i}.", f"A cat sleeps on the sofa {i}.", 0.0) for i in range(n)]
    return [r for pair in zip(similar, different) for r in pair]


def gap(model, rows) -> float:
    """Mean cosine of similar pairs minus that of unrelated pairs."""
    a = model.encode([r[0] for r in rows], normalize_embeddings=True)
    b = model.encode([r[1] for r in rows], normalize_embeddings=True)
    cosine = (a * b).sum(1)
    scores = np.array([r[2] for r in rows])
    return float(cosine[scores > 2].mean() - cosine[scores <= 2].mean())


def test_a_few_lora_steps_separate_the_pairs_and_train_only_the_adapter(tmp_path) -> None:
    model = echo_embeddings.load(str(save_tiny_model(tmp_path / "base")), "echo", device="cpu")
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = scored_rows()
    before = gap(model, rows)
    from transformers import TrainerCallback

    losses = []

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    training.train(
        model, training.TrainingData("scored", rows, "memory"), tmp_path / "out", max_steps=8, batch_size=8, learning_rate=5e-3,
        show_progress_bar=False, callbacks=[Losses()],
    )
    assert len(losses) >= 4 and sum(losses[-2:]) < sum(losses[:2])  # the trainer's own loss went down
    assert gap(model, rows) > before + 0.05
    changed = {n for n, p in model.named_parameters() if n in base and not torch.equal(p, base[n])}
    assert changed == set()  # the base weights never moved
    saved = json.loads((tmp_path / "out" / "echo_embeddings_config.json").read_text())
    assert saved["lora"]["r"] == 16 and saved["base_model"] == str((tmp_path / "base").resolve())
    assert not (tmp_path / "out" / "model.safetensors").exists()
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")  # what runs, and what it was trained on
    assert "**LoRA adapter:** rank 16" in card and "## Training Details" in card and f"Size: {len(rows)} training samples" in card
    again = echo_embeddings.load(str(tmp_path / "out"), device="cpu")
    assert torch.allclose(again.encode(TEXTS, convert_to_tensor=True), model.encode(TEXTS, convert_to_tensor=True), atol=1e-6)


def test_full_fine_tuning_saves_full_weights(tmp_path) -> None:
    model = echo_embeddings.load(str(save_tiny_model(tmp_path / "base")), "echo", device="cpu")
    rows = scored_rows(8)
    before = gap(model, rows)
    training.train(model, training.TrainingData("scored", rows, "memory"), tmp_path / "out", lora=False, max_steps=6, batch_size=8, learning_rate=1e-3, show_progress_bar=False)
    assert gap(model, rows) > before
    assert (tmp_path / "out" / "model.safetensors").exists() and model[0].lora is None
    again = echo_embeddings.load(str(tmp_path / "out"), device="cpu")
    assert torch.allclose(again.encode(TEXTS, convert_to_tensor=True), model.encode(TEXTS, convert_to_tensor=True), atol=1e-6)


def test_adapter_round_trip_and_merge(tmp_path) -> None:
    folder = save_lora_model(tmp_path)
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".safetensors") == ["adapter_model.safetensors"]
    assert (folder / "adapter_model.safetensors").stat().st_size < 100_000
    model = echo_embeddings.load(str(folder), device="cpu")
    base = echo_embeddings.load(str(tmp_path / "base"), device="cpu")
    adapted = model.encode(TEXTS, convert_to_tensor=True)
    assert (adapted - base.encode(TEXTS, convert_to_tensor=True)).abs().max() > 1e-3  # the adapter acts
    echo_embeddings.merge_lora(model)
    assert model[0].lora is None and torch.allclose(model.encode(TEXTS, convert_to_tensor=True), adapted, atol=1e-5)
    model.save(str(tmp_path / "merged"))
    merged = echo_embeddings.load(str(tmp_path / "merged"), device="cpu")
    assert torch.allclose(merged.encode(TEXTS, convert_to_tensor=True), adapted, atol=1e-5)
    with pytest.raises(ValueError, match="no LoRA adapter to merge"):
        echo_embeddings.merge_lora(merged)
    model.save(str(folder))  # merged weights over the adapter's own folder (train --merge): the stale adapter goes
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".safetensors") == ["model.safetensors"]
    assert torch.allclose(echo_embeddings.load(str(folder), device="cpu").encode(TEXTS, convert_to_tensor=True), adapted, atol=1e-5)


def test_sentence_transformers_add_adapter_takes_a_peft_config(make_model) -> None:
    model = make_model("echo")
    before = model.encode(TEXTS, convert_to_tensor=True)
    model.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], layers_to_transform=[3]))
    assert model[0].lora == {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "layers": [3]}
    assert torch.allclose(model.encode(TEXTS, convert_to_tensor=True), before)  # an adapter starts at zero
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ".3." in n for n in trainable)
    with pytest.raises(ValueError, match="already has a LoRA adapter"):
        echo_embeddings.add_lora(model)
    with pytest.raises(ValueError, match="outside the model's 0..3"):
        echo_embeddings.add_lora(make_model("echo"), layers=[7])


def test_an_adapter_on_a_model_object_needs_merging_to_save(make_model, tmp_path) -> None:
    model = echo_embeddings.add_lora(make_model("echo"), r=2)
    with pytest.raises(ValueError, match="merge_lora"):
        model.save(str(tmp_path / "x"))


def test_training_batches_lay_texts_into_the_inference_templates(make_model) -> None:
    """What the trainer's collator gets from ``preprocess`` is what ``encode`` runs, per task."""
    module = make_model("echo")[0]
    for task in (None, "query", "document"):
        features = module.preprocess(TEXTS, task=task)
        expected = module.engine.tokenize(TEXTS, task).as_features()
        assert features.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(features[key], value) if isinstance(value, torch.Tensor) else features[key] == value
    assert training.ROUTES == {"anchor": "query", "positive": "document", "negative": "document"}


def test_training_files_are_read_and_checked(tmp_path) -> None:
    scored = tmp_path / "scored.tsv"
    scored.write_text("score\tsentence1\tsentence2\n4.5\tA dog runs.\tA dog is running.\n0.5\tStocks fell.\tA cat sleeps.\n")
    data = training.read_training_file(scored)
    assert data.kind == "scored" and data.rows[0] == ("A dog runs.", "A dog is running.", 4.5)
    assert data.dataset().column_names == ["sentence1", "sentence2", "score"]
    triplets = tmp_path / "triplets.jsonl"
    triplets.write_text('{"anchor": "where is the dog", "positive": "The dog is in the park.", "negative": "Stocks fell."}\n')
    assert training.read_training_file(triplets).kind == "triplets"
    pairs = tmp_path / "pairs.csv"
    pairs.write_text('question,answer\n"what runs, quickly?",A dog runs.\n')
    assert training.read_training_file(pairs, ["question", "answer"]).kind == "pairs"

    bad = tmp_path / "bad.tsv"
    bad.write_text("score\tsentence1\tsentence2\n4.5\tA dog runs.\tA dog is running.\nhigh\tA\tB\n")
    with pytest.raises(DataError, match=r"bad.tsv:3: score 'high' in column 'score' is not a number"):
        training.read_training_file(bad)
    bad.write_text("score\tsentence1\tsentence2\n4.5\tA dog runs.\t \n")
    with pytest.raises(DataError, match=r"bad.tsv:2: column 'sentence2' is empty"):
        training.read_training_file(bad)
    bad.write_text("a\tb\n1\t2\n")  # unknown names: the text columns in order, as sentence-transformers reads them
    assert training.read_training_file(bad).columns == ("a", "b")
    bad.write_text("a\tscore\n1\t2\n")
    with pytest.raises(DataError, match=r"cannot tell which columns hold the texts .* 1 besides a score.* --text-columns"):
        training.read_training_file(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"anchor": "a", "positive": "b"}\n{"anchor": \n')
    with pytest.raises(DataError, match=r"broken.jsonl:2: not a JSON object"):
        training.read_training_file(broken)
    with pytest.raises(DataError, match="different shapes cannot be mixed"):
        training.read_training_files([scored, triplets])
    with pytest.raises(DataError, match="loss 'mnrl' needs pairs or triplets, but the data are scored"):
        training.check_loss("scored", "mnrl")


def test_pairs_from_a_corpus(tmp_path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"_id": str(i), "title": f"Title {i}", "text": f"The body of document {i} is long enough."}) for i in range(3)))
    data = training.pairs_from_corpus(corpus)
    assert data.kind == "pairs" and data.rows[0] == ("Title 0", "The body of document 0 is long enough.")
    text = tmp_path / "notes.txt"
    text.write_text("First paragraph, long enough to count.\n\nSecond paragraph, long enough too.\n\nThird paragraph closes the notes.")
    assert training.pairs_from_corpus(text).rows[1] == ("Second paragraph, long enough too.", "Third paragraph closes the notes.")


def test_the_train_command(tmp_path, capsys: pytest.CaptureFixture) -> None:
    base = str(save_tiny_model(tmp_path / "base"))
    data = tmp_path / "train.tsv"
    data.write_text("score\tsentence1\tsentence2\n" + "\n".join(f"{r[2]}\t{r[0]}\t{r[1]}" for r in scored_rows(8)))
    argv = ["train", str(data), "--model", base, "--out", str(tmp_path / "out"), "--max-steps", "2", "--batch-size", "4", "--dev", str(data), "--lora-layers", "2-3"]
    assert cli.main(argv) == 0
    assert "LoRA adapter on" in capsys.readouterr().out
    config = json.loads((tmp_path / "out" / "echo_embeddings_config.json").read_text())
    assert config["lora"]["layers"] == [2, 3]
    assert echo_embeddings.load(str(tmp_path / "out")).encode(TEXTS).shape == (3, 32)
    assert cli.main([*argv[:4], "--out", str(tmp_path / "merged"), "--max-steps", "1", "--merge"]) == 0
    assert (tmp_path / "merged" / "model.safetensors").exists()
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"_id": str(i), "title": f"Title {i}", "text": f"The body of document {i} is long enough."}) for i in range(8)))
    adapted = ["train", "--pairs-from", str(corpus), "--model", base, "--out", str(tmp_path / "adapted"), "--max-steps", "1", "--batch-size", "4"]
    assert cli.main([*adapted, "--max-batch-tokens", "200", "--max-seq-length", "40"]) == 0
    assert json.loads((tmp_path / "adapted" / "echo_embeddings_config.json").read_text())["max_seq_length"] > 40  # a training-only cap
    # Bad input stops before any model work, naming the file and line.
    bad = tmp_path / "bad.tsv"
    bad.write_text("score\tsentence1\tsentence2\nx\ta\tb\n")
    assert cli.main(["train", str(bad), "--model", "no-such-model", "--out", str(tmp_path / "never")]) == 2
    assert "bad.tsv:2: score 'x'" in capsys.readouterr().err
    assert cli.main(["train", "--model", base, "--out", str(tmp_path / "never")]) == 2
    assert cli.main(["train", str(data), "--loss", "mnrl", "--model", "no-such-model", "--out", str(tmp_path / "never")]) == 2
    assert cli.main(["train", str(data), "--max-batch-tokens", "0", "--model", "no-such-model", "--out", str(tmp_path / "never")]) == 2
    assert "--max-batch-tokens 0: give a positive number of tokens" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arch, strategy, options",
    [
        ("llama", "echo", {}),
        ("llama", "echo", {"packing": False}),
        ("gemma3", "echo", {"output_layer": 4}),
        ("gpt_neox", "echo", {"target_modules": ["query_key_value", "dense_h_to_4h"]}),
        ("llama", "prompteol+tp", {"tp_layers": (1, 3), "output_layer": -1}),
    ],
)
def test_kept_frozen_states_give_the_full_forward_s_vectors_and_gradients(make_model, arch, strategy, options) -> None:
    """The second time a row is seen, the layers below the adapter do not run, and the vectors and
    gradients are the full forward's."""
    from echo_embeddings.engine.model_parts import decoder_layers
    from echo_embeddings.training.frozen_states import FrozenStates

    options = dict(options)
    packing, targets = options.pop("packing", None), options.pop("target_modules", None)
    model = echo_embeddings.add_lora(make_model(strategy, arch, **options), r=4, layers=[2, 3], **({"target_modules": targets} if targets else {}))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.2, generator=torch.Generator().manual_seed(0))
    module = model[0]
    module.engine.packing = packing
    features = module.preprocess(TEXTS + ["A dog runs.", "Dogs run in the park."], task="document")
    calls: list[int] = []  # tokens layer 0 read per call, leaving out the template prefix (recomputed while training)
    decoder_layers(module.model)[0].register_forward_hook(lambda _m, args, out: calls.append(out.shape[-2] - len(features.get("prefix", ()))))

    def step() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        vectors = module.forward(dict(features))["sentence_embedding"]
        (vectors * torch.linspace(-1, 1, vectors.shape[1])).sum().backward()
        return vectors.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    full, full_grads = step()
    frozen = FrozenStates(module.model)
    with module.engine.entering_with(frozen):
        assert frozen.start == 2
        first, _ = step()  # every row new: all layers run, their inputs to layer 2 are kept
        assert frozen.computed == 4 and frozen.served == 0 and torch.allclose(first, full, atol=1e-5)  # one text is repeated
        calls.clear()
        kept, kept_grads = step()
        assert set(calls) <= {0} and frozen.served == 5  # layers 0 and 1 did not run on the rows
        assert torch.allclose(kept, full, atol=1e-5)
        assert all(torch.allclose(kept_grads[n], g, atol=1e-5) for n, g in full_grads.items())
        assert type(decoder_layers(module.model)[0]).__name__ != "PassThrough"  # the layers are back
        calls.clear()
        with torch.no_grad():  # outside training it plays no part
            module.forward(dict(features))
        assert max(calls) > 0 and frozen.served == 5


def test_kept_frozen_states_refuse_a_lower_layer_that_starts_training(make_model) -> None:
    from echo_embeddings.training.frozen_states import FrozenStates

    model = echo_embeddings.add_lora(make_model("echo"), r=4, layers=[2, 3])
    module = model[0]
    frozen = FrozenStates(module.model)
    next(p for n, p in module.model.named_parameters() if ".1." in n).requires_grad_(True)
    with module.engine.entering_with(frozen), pytest.raises(RuntimeError, match="below decoder layer 2 now trains"):
        module.forward(module.preprocess(TEXTS))


def test_training_reuses_frozen_states_from_the_second_epoch_with_the_same_result(tmp_path, caplog) -> None:
    rows = scored_rows(8)
    data = training.TrainingData("scored", rows, "memory")
    vectors = {}
    for reuse in (False, True):
        model = echo_embeddings.load(str(save_tiny_model(tmp_path / "base")), "echo", device="cpu")
        with caplog.at_level("INFO", logger="echo_embeddings.training"):
            training.train(
                model, data, tmp_path / f"out{reuse}", epochs=2, batch_size=8, lora_layers=[2, 3], learning_rate=5e-3,
                show_progress_bar=False, reuse_frozen=reuse,
            )
        assert model[0].engine.entry is None  # only for the run
        vectors[reuse] = model.encode(TEXTS, convert_to_tensor=True)
    assert "32 rows (a text in a template) computed once, served 32 times" in caplog.text  # every text of epoch 2 started at layer 2
    assert torch.allclose(vectors[True], vectors[False], atol=1e-4)


@pytest.mark.parametrize("loss", ["angle", "cosine", "cached-mnrl"])
def test_every_offered_loss_trains_on_an_echo_model(tmp_path, loss) -> None:
    """Beyond CoSENT and MNRL (above): AnglE, cosine similarity, and the cached MNRL, whose
    gradient cache runs the model twice per step (without gradients, then with them)."""
    model = echo_embeddings.load(str(save_tiny_model(tmp_path / "base")), "echo", device="cpu")
    rows = scored_rows(8)
    data = training.TrainingData("scored", rows, "memory")
    if loss == "cached-mnrl":
        data = training.TrainingData("pairs", [(a, b) for a, b, score in rows if score > 2], "memory")
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    training.train(model, data, tmp_path / "out", max_steps=2, batch_size=4, lora_layers=[2, 3], loss=loss, show_progress_bar=False)
    after = dict(model.named_parameters())
    assert any(not torch.equal(after[n], p) for n, p in before.items() if n in after) or before == {}
    assert any("lora_" in n and p.abs().sum() > 0 for n, p in after.items() if "lora_B" in n)  # the adapter moved


def test_a_training_length_cap_cuts_training_prompts_only(tmp_path, monkeypatch, caplog) -> None:
    """``max_seq_length`` in ``train`` truncates the training prompts, says so once in the log
    (not in a warning for every batch), and is taken back afterwards: the saved model runs at
    its own length and warns again when it truncates."""
    model = echo_embeddings.load(str(save_tiny_model(tmp_path / "base")), "echo", device="cpu")
    inference_length = model[0].max_seq_length
    engine = model[0].engine
    collate, longest = engine.collate, []

    def recording(*args, **kwargs):
        batch = collate(*args, **kwargs)
        lengths = batch.cu_seqlens.diff() if batch.packed else batch.attention_mask.sum(1)
        if engine.max_seq_length == 40:  # while training (the trainer also encodes examples before it)
            longest.append(int(lengths.max()))
        return batch

    monkeypatch.setattr(engine, "collate", recording)  # every batch the trainer builds
    long = " ".join(["words of a long document"] * 20)
    rows = [(f"title {i}", f"{long} {i}") for i in range(8)]
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO, logger="echo_embeddings"):
        warnings.simplefilter("always")
        training.train(model, training.TrainingData("pairs", rows, "memory"), tmp_path / "out", max_steps=2, batch_size=4, lora_layers=[2, 3], max_seq_length=40, show_progress_bar=False)
    assert len(longest) >= 2 and max(longest) <= 40
    assert [r.getMessage() for r in caplog.records if "prompts cut" in r.getMessage()] == [
        f"training prompts cut to 40 tokens; the saved model keeps max_seq_length={inference_length}"
    ]
    assert not [(w.filename, w.lineno, str(w.message)) for w in caught if "fits max_seq_length=40" in str(w.message)]
    assert model[0].max_seq_length == inference_length
    model[0].max_seq_length = 40
    with pytest.warns(UserWarning, match="truncated before repetition so that the prompt fits max_seq_length=40"):
        model.encode([long])  # outside training the engine warns as before
    saved = json.loads((tmp_path / "out" / "echo_embeddings_config.json").read_text())
    assert saved["max_seq_length"] == inference_length > 40


def test_the_stock_trainer_runs_unchanged_with_prompts_sampler_router_and_evaluator(tmp_path, monkeypatch) -> None:
    """No helper of ours: ``SentenceTransformerTrainer`` with its own arguments (``prompts=``, the
    no-duplicates batch sampler, a router mapping to the query/document templates), a stock loss
    and evaluator, LoRA through ``add_adapter``. The trainer's columns reach the templates that
    ``encode_query`` / ``encode_document`` run, with the prompt, and the adapter trains."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer import evaluation, losses

    model = echo_embeddings.load(str(save_tiny_model(tmp_path / "base")), "echo", device="cpu")
    model.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    module = model[0]
    calls = []
    preprocess = module.preprocess

    def recording(inputs, prompt=None, task=None, **kwargs):
        calls.append((list(inputs), prompt, task))
        return preprocess(inputs, prompt=prompt, task=task, **kwargs)

    monkeypatch.setattr(module, "preprocess", recording)
    rows = [(f"where do dogs run {i}?", f"Dogs run in the park number {i}.") for i in range(8)]
    data = Dataset.from_dict({"anchor": [a for a, _ in rows], "positive": [p for _, p in rows]})
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2, report_to=[],
        prompts={"anchor": "query: "}, batch_sampler=BatchSamplers.NO_DUPLICATES, router_mapping=training.ROUTES,
        save_strategy="no", disable_tqdm=True, use_cpu=True,
    )
    dev = evaluation.EmbeddingSimilarityEvaluator([a for a, _ in rows], [p for _, p in rows], [1.0, 0.0] * 4, name="dev")
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=losses.MultipleNegativesRankingLoss(model), evaluator=dev)
    trainer.train()
    anchors = [c for c in calls if c[2] == "query" and c[1] is not None]  # the trainer also encodes widget examples
    positives = [c for c in calls if c[2] == "document"]
    assert len(anchors) >= 2 and {c[1] for c in anchors} == {"query: "} and len(positives) >= 2 and {c[1] for c in positives} == {None}
    texts, prompt, _ = anchors[0]
    trained = {k: v for k, v in preprocess(texts, prompt=prompt, task="query").items()}
    inference = module.engine.tokenize(texts, "query", instruction="query: ").as_features()  # the echo query template's {instruction}
    assert all(torch.equal(trained[k], v) if isinstance(v, torch.Tensor) else trained[k] == v for k, v in inference.items())
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)  # the adapter moved
    assert "dev_spearman_cosine" in dev(model)


def test_lora_layers_below_the_pooled_hidden_state(tmp_path, capsys: pytest.CaptureFixture) -> None:
    """``below:N`` names the N layers under the hidden state the model pools, whatever its depth."""
    model = echo_embeddings.load(str(save_tiny_model(tmp_path / "base")), "echo", device="cpu")
    n = len(model[0].model.layers)
    assert training.layers_below_output(model, 2) == [n - 2, n - 1]  # final hidden state: the top two layers
    model[0].output_layer = -2  # hidden state n - 1, the output of layer n - 2
    assert training.layers_below_output(model, 2) == [n - 3, n - 2]
    with pytest.raises(ValueError, match=f"pools hidden state {n - 1}, so give 1 to {n - 1} layers"):
        training.layers_below_output(model, n)
    training.train(model, training.TrainingData("scored", scored_rows(4), "memory"), tmp_path / "out", max_steps=1, batch_size=4, lora_layers="below:2", show_progress_bar=False)
    assert json.loads((tmp_path / "out" / "echo_embeddings_config.json").read_text())["lora"]["layers"] == [n - 3, n - 2]
    data = tmp_path / "train.tsv"
    data.write_text("score\tsentence1\tsentence2\n" + "\n".join(f"{r[2]}\t{r[0]}\t{r[1]}" for r in scored_rows(2)))
    assert cli.main(["train", str(data), "--lora-layers", "below:0", "--model", "no-such-model", "--out", str(tmp_path / "never")]) == 2
    assert "below:N takes a positive number of layers" in capsys.readouterr().err
