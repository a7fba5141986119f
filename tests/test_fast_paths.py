"""Every optimization returns the vectors of the plain path: prefix cache, packing, streaming."""

from __future__ import annotations

import pytest
import torch

from echo_embeddings import PRESETS
from echo_embeddings.engine import Embedder

TEXTS = [
    "A man is playing a guitar.",
    "Hi",
    "",
    "Someone plays an instrument on the stage while the crowd sings along loudly.",
    'Braces {x} and "quotes" stay literal.',
    "Rewrite the following sentence:",
]


def plain(engine: Embedder) -> Embedder:
    """The same model and strategy with every optimization off."""
    return Embedder(engine.model, engine.tokenizer, engine.preset, engine.plan, engine.instruction, engine.max_seq_length, prefix_cache=False)


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert torch.nn.functional.cosine_similarity(a, b).min().item() >= 0.99999
    assert (a - b).abs().max().item() <= 1e-4


@pytest.mark.parametrize("strategy", sorted(PRESETS))
def test_prefix_cache_equals_plain_path_every_strategy(make_model, strategy: str) -> None:
    engine = make_model(strategy)[0].embedder
    assert engine.prefix_cache
    for task in (None, "query", "document"):
        assert_same(engine.encode(TEXTS, task, batch_size=4), plain(engine).encode(TEXTS, task, batch_size=4))


def test_prefix_cache_equals_plain_path_every_architecture(make_model, arch: str) -> None:
    for strategy in ("echo", "prompteol+tp"):
        engine = make_model(strategy, arch=arch)[0].embedder
        assert_same(engine.encode(TEXTS, batch_size=4), plain(engine).encode(TEXTS, batch_size=4))


def test_prefix_is_cut_and_computed_once(make_model) -> None:
    engine = make_model("ke")[0].embedder
    batch = engine.tokenize(TEXTS[:2])
    full = plain(engine).tokenize(TEXTS[:2])
    assert len(batch.prefix) > 20  # the Knowledge-Enhancement preamble
    assert batch.input_ids.shape[1] == full.input_ids.shape[1] - len(batch.prefix)
    engine.encode(TEXTS, batch_size=2)
    engine.encode(TEXTS, batch_size=3)
    assert engine._prefixes.misses == 1


def test_prefix_cache_follows_weight_updates(make_model) -> None:
    engine = make_model("echo")[0].embedder
    before = engine.encode(TEXTS)
    with torch.no_grad():
        for p in engine.model.parameters():
            p.mul_(1.5)
    after = engine.encode(TEXTS)
    assert not torch.allclose(before, after)
    assert_same(after, plain(engine).encode(TEXTS))


def test_prefix_cache_with_early_exit_and_left_padding(make_model) -> None:
    for options in ({"output_layer": 1}, {"output_layer": 1, "final_norm": True}, {"output_layer": -1}):
        engine = make_model("echo", **options)[0].embedder
        left = Embedder(engine.model, engine.tokenizer, engine.preset, engine.plan, padding_side="left")
        assert_same(engine.encode(TEXTS, batch_size=4), plain(engine).encode(TEXTS, batch_size=4))
        assert_same(left.encode(TEXTS, batch_size=4), plain(engine).encode(TEXTS, batch_size=4))


def test_gradients_reach_the_prefix_when_training(make_model) -> None:
    engine = make_model("echo")[0].embedder
    batch = engine.tokenize(TEXTS[:2])
    assert batch.prefix
    engine.forward(batch).sum().backward()
    grads = engine.model.get_input_embeddings().weight.grad
    assert grads[list(batch.prefix)].abs().sum() > 0
