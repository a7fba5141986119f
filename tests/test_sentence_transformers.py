"""The sentence-transformers surface: a genuine SentenceTransformer that saves, reloads and trains."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

import echo_embeddings
from echo_embeddings import EchoSentenceTransformer

TEXTS = ["A man is playing a guitar.", "Someone plays an instrument.", "The market fell today."]


def test_is_a_sentence_transformer(make_model) -> None:
    model = make_model("echo")
    assert isinstance(model, SentenceTransformer)
    assert model.get_embedding_dimension() == 32
    assert model.max_seq_length == 512
    model.max_seq_length = 64
    assert model[0].engine.max_seq_length == 64


def test_save_and_load_round_trip(make_model, tmp_path) -> None:
    model = make_model("prompteol", arch="qwen2", instruction="Find the answer", max_seq_length=128, output_layer=-2)
    before = model.encode(TEXTS, convert_to_tensor=True)
    folder = tmp_path / "my-echo-model"
    model.save(str(folder))
    config = json.loads((folder / "echo_embeddings_config.json").read_text())
    assert config["requires"].startswith("echo-embeddings>=")
    assert config["strategy"] == "prompteol" and config["output_layer"] == -2
    modules = json.loads((folder / "modules.json").read_text())
    assert modules[0]["type"] == "echo_embeddings.models.embedder.EchoEmbedder"

    again = echo_embeddings.load(str(folder), device="cpu")
    assert isinstance(again, EchoSentenceTransformer)
    assert torch.equal(again.encode(TEXTS, convert_to_tensor=True), before)
    assert again[0].instruction == "Find the answer" and again.max_seq_length == 128

    plain = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    assert torch.equal(plain.encode(TEXTS, convert_to_tensor=True), before)
    with pytest.raises(ValueError, match="trust_remote_code"):
        SentenceTransformer(str(folder), device="cpu")
    with pytest.raises(ValueError, match="keeps its own settings"):
        echo_embeddings.load(str(folder), "echo")


def test_query_and_document_use_their_templates(make_model) -> None:
    model = make_model("echo")
    embedder = model[0].engine
    query = model.encode_query(["what is echo?"], convert_to_tensor=True)
    document = model.encode_document(["what is echo?"], convert_to_tensor=True)
    plain = model.encode(["what is echo?"], convert_to_tensor=True)
    assert torch.allclose(query[0], embedder.encode(["what is echo?"], "query")[0], atol=1e-5)
    assert torch.allclose(document[0], embedder.encode(["what is echo?"], "document")[0], atol=1e-5)
    assert not torch.allclose(query, document) and not torch.allclose(query, plain)


def test_prompt_fills_the_instruction(make_model) -> None:
    model = make_model("echo")
    embedder = model[0].engine
    custom = model.encode_query(["q"], prompt="Find duplicates", convert_to_tensor=True)
    assert torch.allclose(custom[0], embedder.encode(["q"], "query", instruction="Find duplicates")[0], atol=1e-5)
    # A prompt for symmetric inputs goes to the query template's instruction (echo's sentence
    # template has none), as MTEB's STS or classification prompts do.
    symmetric = model.encode(["q"], prompt="Find duplicates", convert_to_tensor=True)
    assert torch.allclose(symmetric, custom, atol=1e-5)
    # The document template has no {instruction} either, but is asked for by name: prepended.
    document = model.encode_document(["q"], prompt="Topic: ", convert_to_tensor=True)
    assert torch.allclose(document[0], embedder.encode(["Topic: q"], "document")[0], atol=1e-5)
    # A template without {instruction} gets the prompt prepended, as sentence-transformers does.
    mean = make_model("mean")
    prompted = mean.encode(["q"], prompt="Topic: ", convert_to_tensor=True)
    assert torch.allclose(prompted[0], mean[0].engine.encode(["Topic: q"])[0], atol=1e-5)


def test_documented_encode_options(make_model) -> None:
    model = make_model("echo")
    normalized = model.encode(TEXTS, normalize_embeddings=True)
    assert np.allclose(np.linalg.norm(normalized, axis=1), 1, atol=1e-5)
    assert model.encode(TEXTS, truncate_dim=8).shape == (3, 8)
    assert model.encode(TEXTS, precision="int8").dtype == np.int8
    assert model.encode(TEXTS, precision="ubinary").shape == (3, 4)
    scores = model.similarity(normalized, normalized)
    assert scores.shape == (3, 3) and torch.allclose(scores.diagonal(), torch.ones(3), atol=1e-5)
    assert model.encode(TEXTS, show_progress_bar=True, batch_size=1).shape == (3, 32)


def test_forward_is_differentiable(make_model) -> None:
    model = make_model("echo", arch="mistral")
    model.train()
    features = model.preprocess(TEXTS[:2])
    embeddings = model(features)["sentence_embedding"]
    loss = 1 - torch.nn.functional.cosine_similarity(embeddings[0:1], embeddings[1:2]).sum()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_multi_process_pool(make_model) -> None:
    model = make_model("echo")
    single = model.encode(TEXTS * 2)
    pool = model.start_multi_process_pool(["cpu", "cpu"])
    try:
        pooled = model.encode(TEXTS * 2, pool=pool, chunk_size=2)
    finally:
        model.stop_multi_process_pool(pool)
    assert np.allclose(pooled, single, atol=1e-5)


def test_checkpoint_ids_pick_their_templates() -> None:
    from echo_embeddings.engine.presets import CHECKPOINT_PRESETS, PRESETS

    for checkpoint, preset in CHECKPOINT_PRESETS.items():
        (template,) = PRESETS[preset].templates("query")
        assert template.render("x", "i") == "Instruct: i,\nQuery: x\nQuery again: x<eos>"
        assert PRESETS[preset].templates("document")[0].render("x") == "Document: x\nDocument again: x<eos>"
    assert PRESETS["echo-mistral-lasttoken"].sentence[0].pooling == "last"
    assert PRESETS["echo-mistral-meantoken"].sentence[0].pooling == "mean"


def test_checkpoint_id_selects_its_preset(bpe_tokenizer) -> None:
    from conftest import tiny_decoder

    from echo_embeddings import EchoEmbedder

    module = EchoEmbedder("jspringer/echo-mistral-7b-instruct-meantoken", model=tiny_decoder("mistral", len(bpe_tokenizer)), tokenizer=bpe_tokenizer)
    assert module.strategy == "echo-mistral-meantoken"


def test_prompt_names_select_templates_like_mteb(make_model, tmp_path) -> None:
    from helpers import save_tiny_model

    model = echo_embeddings.load(str(save_tiny_model(tmp_path / "tiny")), "echo", device="cpu")
    embedder = model[0].engine
    by_name = model.encode(["q?"], prompt_name="query", convert_to_tensor=True)
    assert torch.allclose(by_name[0], embedder.encode(["q?"], "query")[0], atol=1e-5)
    passage = model.encode(sentences=["d"], prompt_name="document", convert_to_tensor=True)
    assert torch.allclose(passage[0], embedder.encode(["d"], "document")[0], atol=1e-5)
    assert torch.allclose(model.encode_query(["q?"], convert_to_tensor=True), by_name, atol=1e-5)


def test_template_object_round_trips(make_model, tmp_path) -> None:
    from echo_embeddings import Template

    model = make_model(Template.parse("Say {x} in a word:", "last"))
    before = model.encode(TEXTS, convert_to_tensor=True)
    model.save(str(tmp_path / "t"))
    again = echo_embeddings.load(str(tmp_path / "t"), device="cpu")
    assert again[0].pooling == "last" and torch.equal(again.encode(TEXTS, convert_to_tensor=True), before)


def test_the_saved_model_card_says_how_to_load_it_and_its_snippets_run(tmp_path) -> None:
    import re
    import subprocess
    import sys

    from helpers import save_tiny_model

    model = echo_embeddings.load(str(save_tiny_model(tmp_path / "base")), "echo", device="cpu", output_layer=-2)
    model.save(str(tmp_path / "card-model"))
    card = (tmp_path / "card-model" / "README.md").read_text(encoding="utf-8")
    assert "pip install 'echo-embeddings>=" in card and "trust_remote_code=True" in card
    assert "**Pooled hidden state:** `output_layer=-2`" in card and "sentence template: `Rewrite the following sentence:" in card
    assert "sentence_transformers_model_id" not in card
    snippets = re.findall(r"```python\n(.*?)```", card, flags=re.DOTALL)
    assert len(snippets) >= 2  # ours and sentence-transformers' own usage
    for snippet in snippets:
        snippet = snippet.replace(str(tmp_path / "card-model"), "card-model")
        done = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, snippet + done.stderr[-3000:]
