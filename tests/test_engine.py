"""The engine on tiny random decoders: order, batch invariance, errors, truncation, odd inputs."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from echo_embeddings import PRESETS, Template

MIXED = [
    "A man is playing a guitar.",
    "Hi",
    "Someone plays an instrument on the stage while the crowd sings along loudly.",
    "",
    "   ",
    'Braces {x} {instruction} and "quotes" </s> <s> <|endoftext|> stay literal.',
    "A man is playing a guitar.",
    "Rewrite the following sentence:",
]


@pytest.mark.parametrize("strategy", sorted(PRESETS))
def test_batch_invariance_every_strategy(make_model, strategy: str) -> None:
    model = make_model(strategy)
    together = model.encode(MIXED, batch_size=8, convert_to_tensor=True)
    alone = torch.cat([model.encode([t], convert_to_tensor=True) for t in MIXED])
    assert (together - alone).abs().max().item() <= 1e-4
    engine = model[0].engine.encode(MIXED, batch_size=3)
    assert (engine - alone).abs().max().item() <= 1e-4


def test_batch_invariance_every_architecture(make_model, arch: str) -> None:
    model = make_model("echo", arch=arch)
    together = model[0].engine.encode(MIXED, batch_size=8)
    alone = torch.cat([model[0].engine.encode([t]) for t in MIXED])
    assert torch.isfinite(together).all()
    assert (together - alone).abs().max().item() <= 1e-4


def test_order_count_and_duplicates_are_kept(make_model) -> None:
    model = make_model("echo")
    model[0].max_batch_tokens = 64
    vectors = model[0].engine.encode(MIXED, batch_size=2)
    assert vectors.shape[0] == len(MIXED)
    assert torch.equal(vectors[0], vectors[6])  # the duplicate
    assert not torch.allclose(vectors[0], vectors[1])
    st_vectors = model.encode(MIXED, convert_to_tensor=True, batch_size=3)
    assert (st_vectors - vectors).abs().max().item() <= 1e-4


def test_empty_and_whitespace_inputs_are_finite(make_model) -> None:
    for strategy in ("echo", "prompteol", "raw-mean", "last"):
        vectors = make_model(strategy)[0].engine.encode(["", "   ", "\n"])
        assert torch.isfinite(vectors).all() and vectors.norm(dim=1).min() > 0


@pytest.mark.parametrize("bad", [None, b"bytes", 3, 2.5, ["nested"]])
def test_non_strings_fail_before_any_model_work(make_model, bad: object, monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model("echo")
    calls = []
    monkeypatch.setattr(model[0].engine, "forward", lambda *a: calls.append(a))
    texts = ["fine", "also fine", bad, "fine"]
    with pytest.raises(TypeError, match=rf"Input 2 is {type(bad).__name__}"):
        model.encode(texts)
    with pytest.raises(TypeError, match="Input 2"):
        model[0].engine.encode(texts)
    assert calls == []


def test_single_string_is_not_split_into_characters(make_model) -> None:
    model = make_model("echo")
    assert model.encode("one sentence").shape == (32,)
    with pytest.raises(TypeError, match="single str"):
        model[0].engine.encode("one sentence")


def test_literal_braces_and_special_strings(make_model, bpe_tokenizer) -> None:
    model = make_model("echo")
    text = "{x} {instruction} <|endoftext|>"
    ((prepared,),) = model[0].engine.prepare([text])
    pooled = bpe_tokenizer.decode([prepared.ids[i] for i in prepared.pooled])
    assert pooled.strip() == text
    # A special-token string typed by a user is text, not the special token.
    assert bpe_tokenizer.eos_token_id not in prepared.ids


def test_truncation_shortens_before_repeating_and_warns_once(make_model) -> None:
    model = make_model("echo", max_seq_length=48)
    long_text = " ".join(["word"] * 200)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = [item[0] for item in model[0].engine.prepare([long_text, "short", long_text])]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and messages[0].startswith("2 of 3 inputs")
    ids = prepared[0].ids
    assert len(ids) <= 48
    pooled = [ids[i] for i in prepared[0].pooled]
    first_copy_start = next(i for i in range(len(ids)) if ids[i : i + len(pooled)] == pooled)
    assert first_copy_start < prepared[0].pooled[0], "both copies hold the same truncated text"
    assert math.isfinite(model[0].engine.encode([long_text]).sum().item())


def test_template_longer_than_the_budget_is_an_error(make_model) -> None:
    model = make_model("ke", max_seq_length=10)
    with pytest.raises(ValueError, match="leaving no room"):
        model.encode(["x"])


def test_custom_template_string_and_object(make_model, bpe_tokenizer) -> None:
    model = make_model("Summarize: {x*} in short.")
    ((prepared,),) = model[0].engine.prepare(["dogs run"])
    assert bpe_tokenizer.decode([prepared.ids[i] for i in prepared.pooled]) == " dogs run"
    last = make_model(Template.parse("Say {x} in a word:", "last"))
    ((prepared,),) = last[0].engine.prepare(["dogs run"])
    assert bpe_tokenizer.decode([prepared.ids[prepared.pooled[-1]]]) == ":"


def test_token_budget_batches_cap_padded_tokens(make_model) -> None:
    from echo_embeddings.engine.schedule import token_budget_batches

    embedder = make_model("echo")[0].engine
    prepared = embedder.prepare(MIXED * 4)
    order = sorted(range(len(prepared)), key=lambda i: -len(prepared[i][0].ids))
    batches = token_budget_batches(order, prepared, batch_size=100, max_tokens=120)
    assert sorted(i for b in batches for i in b) == list(range(len(prepared)))
    for batch in batches:
        width = max(len(prepared[i][0].ids) for i in batch)
        assert len(batch) == 1 or len(batch) * width <= 120


def test_out_of_memory_halves_the_batch(make_model, monkeypatch: pytest.MonkeyPatch) -> None:
    embedder = make_model("echo")[0].engine
    expected = embedder.encode(MIXED, batch_size=8)
    real_forward = embedder.forward

    def small_memory(batch):
        if batch.last_index.shape[0] > 2:  # rows, packed or padded
            raise torch.OutOfMemoryError("simulated")
        return real_forward(batch)

    monkeypatch.setattr(embedder, "forward", small_memory)
    with pytest.warns(UserWarning, match="retrying it in halves"):
        got = embedder.encode(MIXED, batch_size=8)
    assert (got - expected).abs().max().item() <= 1e-5
    monkeypatch.setattr(embedder, "forward", lambda batch: (_ for _ in ()).throw(torch.OutOfMemoryError("one text")))
    with pytest.raises(torch.OutOfMemoryError):
        embedder.encode(["a single text"])


@pytest.mark.parametrize("strategy", ["echo", "prompteol+tp", "metaeol", "mean"])
@pytest.mark.parametrize("packing", [None, False])
def test_features_round_trip_and_cut_into_row_mini_batches(make_model, strategy: str, packing: bool | None) -> None:
    """``as_features`` / ``from_features`` give the batch back, and a mini-batch of rows cut the way
    sentence-transformers' cached losses cut features gives those rows' vectors."""
    from sentence_transformers.base.losses.gradcache import _create_minibatch

    from echo_embeddings.engine.batching import Batch

    model = make_model(strategy)
    module = model[0]
    module.engine.packing = packing
    texts = ["A man is playing a guitar.", "Dogs run.", "The market fell sharply today.", "Yes"]
    batch = module.engine.tokenize(texts)
    again = Batch.from_features(batch.as_features())
    for key in Batch._TENSORS:
        a, b = getattr(batch, key), getattr(again, key)
        assert (a is None and b is None) or torch.equal(a, b), key
    assert (again.pooling, again.groups, again.prefix) == (batch.pooling, batch.groups, batch.prefix)
    if batch.groups > 1:  # MetaEOL rows are template-major: a row cut is not a text cut, and is refused
        with pytest.raises(ValueError, match="cut into mini-batches of rows"):
            module.forward(_create_minibatch(module.preprocess(texts), 1, 3))
        return
    with torch.no_grad():
        whole = module.forward(module.preprocess(texts))["sentence_embedding"]
        cut = module.forward(_create_minibatch(module.preprocess(texts), 1, 3))["sentence_embedding"]
    assert torch.allclose(cut, whole[1:3], atol=1e-5)
