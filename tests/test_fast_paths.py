"""Every optimization returns the vectors of the plain path: prefix cache, packing, streaming."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import echo_embeddings
from echo_embeddings import PRESETS, save_npy
from echo_embeddings.engine import packing as packing_module
from echo_embeddings.engine import Engine

TEXTS = [
    "A man is playing a guitar.",
    "Hi",
    "",
    "Someone plays an instrument on the stage while the crowd sings along loudly.",
    'Braces {x} and "quotes" stay literal.',
    "Rewrite the following sentence:",
]


def plain(engine: Engine) -> Engine:
    """The same model and strategy with every optimization off."""
    return variant(engine, prefix_cache=False, packing=False)


def variant(engine: Engine, **options: object) -> Engine:
    settings = dict(
        instruction=engine.instruction, max_seq_length=engine.max_seq_length, output_layer=engine.output_layer,
        final_norm=engine.final_norm, tp_layers=engine.tp_layers,
    )
    return Engine(engine.model, engine.tokenizer, engine.preset, **(settings | options))  # type: ignore[arg-type]


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert torch.nn.functional.cosine_similarity(a, b).min().item() >= 0.99999
    assert (a - b).abs().max().item() <= 1e-4


@pytest.mark.parametrize("strategy", sorted(PRESETS))
def test_each_optimization_equals_plain_path_every_strategy(make_model, strategy: str) -> None:
    engine = make_model(strategy)[0].engine
    assert engine.prefix_cache and engine.packing_kernel == "grouped-sdpa"
    reference = plain(engine)
    for options in ({}, {"packing": False}, {"prefix_cache": False}):
        for task in (None, "query", "document"):
            assert_same(variant(engine, **options).encode(TEXTS, task, batch_size=4), reference.encode(TEXTS, task, batch_size=4))


def test_each_optimization_equals_plain_path_every_architecture(make_model, arch: str) -> None:
    for strategy in ("echo", "prompteol+tp"):
        engine = make_model(strategy, arch=arch)[0].engine
        for options in ({}, {"packing": False}, {"prefix_cache": False}):
            assert_same(variant(engine, **options).encode(TEXTS, batch_size=4), plain(engine).encode(TEXTS, batch_size=4))


def test_prefix_is_cut_and_computed_once(make_model) -> None:
    engine = variant(make_model("ke")[0].engine, packing=False)
    batch = engine.tokenize(TEXTS[:2])
    full = plain(engine).tokenize(TEXTS[:2])
    assert len(batch.prefix) > 20  # the Knowledge-Enhancement preamble
    assert batch.input_ids.shape[1] == full.input_ids.shape[1] - len(batch.prefix)
    engine.encode(TEXTS, batch_size=2)
    engine.encode(TEXTS, batch_size=3)
    assert engine._prefixes.misses == 1


def test_prefix_cache_follows_weight_updates(make_model) -> None:
    engine = make_model("echo")[0].engine
    before = engine.encode(TEXTS)
    with torch.no_grad():
        for p in engine.model.parameters():
            p.mul_(1.5)
    after = engine.encode(TEXTS)
    assert not torch.allclose(before, after)
    assert_same(after, plain(engine).encode(TEXTS))


def test_prefix_cache_with_early_exit_and_left_padding(make_model) -> None:
    for options in ({"output_layer": 1}, {"output_layer": 1, "final_norm": True}, {"output_layer": -1}):
        engine = make_model("echo", **options)[0].engine
        left = variant(engine, padding_side="left", packing=False)
        assert_same(engine.encode(TEXTS, batch_size=4), plain(engine).encode(TEXTS, batch_size=4))
        assert_same(left.encode(TEXTS, batch_size=4), plain(engine).encode(TEXTS, batch_size=4))


@pytest.mark.parametrize("packing", [True, False])
def test_gradients_reach_the_prefix_when_training(make_model, packing: bool) -> None:
    engine = variant(make_model("echo")[0].engine, packing=packing)
    batch = engine.tokenize(TEXTS[:3])
    assert batch.prefix and batch.packed == packing
    vectors = engine.forward(batch)
    vectors.sum().backward()
    grads = engine.model.get_input_embeddings().weight.grad
    assert grads[list(batch.prefix)].abs().sum() > 0
    with torch.no_grad():
        assert_same(vectors.detach(), plain(engine).encode(TEXTS[:3]))


def test_packed_batch_has_no_padding(make_model) -> None:
    engine = make_model("echo")[0].engine
    batch = engine.tokenize(TEXTS)
    rows = engine.prepare(TEXTS)
    assert batch.packed and batch.input_ids.shape[0] == 1
    assert batch.input_ids.shape[1] == sum(len(item[0].ids) - len(batch.prefix) for item in rows)
    assert batch.position_ids[0, 0].item() == len(batch.prefix)
    # Pooling ships each pooled token's (row, position), not a dense rows x tokens mask.
    assert batch.pool_index.shape == (2, sum(len(item[0].pooled) for item in rows))


def reference_varlen(q, k, v, packing, prefix, scaling):
    """The CUDA kernels' contract on CPU: joined keys from _with_prefix, bottom-right causal per row."""
    keys, values, cu_k, _ = packing_module._with_prefix(k, v, packing, prefix)
    q = q.transpose(0, 1)
    out = torch.empty_like(q)
    cu_q = packing.cu_seqlens.tolist()
    for r, (qa, qb, ka, kb) in enumerate(zip(cu_q, cu_q[1:], cu_k.tolist(), cu_k.tolist()[1:])):
        qs, ks, vs = q[qa:qb].transpose(0, 1), keys[ka:kb].transpose(0, 1), values[ka:kb].transpose(0, 1)
        mask = torch.ones(qb - qa, kb - ka, dtype=torch.bool).tril(kb - ka - (qb - qa))
        o = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scaling, enable_gqa=qs.shape[0] != ks.shape[0])
        out[qa:qb] = o.transpose(0, 1)
    return out


def test_varlen_layout_for_cuda_kernels(make_model, monkeypatch: pytest.MonkeyPatch) -> None:
    """The joined key layout and cu_seqlens that the torch/flash varlen kernels get, checked on CPU."""
    monkeypatch.setitem(packing_module._KERNELS, "grouped-sdpa", reference_varlen)
    for strategy in ("echo", "prompteol+tp", "metaeol"):
        engine = make_model(strategy, arch="qwen2")[0].engine  # grouped-query attention
        assert_same(engine.encode(TEXTS, batch_size=4), plain(engine).encode(TEXTS, batch_size=4))


def counting(texts: list[str], pulled: list[int]):
    for text in texts:
        pulled[0] += 1
        yield text


def test_stream_reads_lazily_and_equals_encode(make_model) -> None:
    model = make_model("echo")
    engine = model[0].engine
    texts = [f"Sentence number {i} about {'dogs' if i % 3 else 'a long walk in the park'}." for i in range(100_000)]
    pulled = [0]
    stream = model.stream(counting(texts, pulled), chunk_size=1000, convert_to_tensor=True)
    first, second = next(stream), next(stream)
    assert first.shape == second.shape == (1000, engine.hidden_size)
    assert pulled[0] <= 2000  # nothing read ahead of the chunk being embedded
    assert_same(torch.cat([first, second])[::97], plain(engine).encode(texts[:2000:97]))
    pulled = [0]
    rows = sum(chunk.shape[0] for chunk in model.stream(counting(texts[:4321], pulled), chunk_size=1000))
    assert rows == pulled[0] == 4321


def test_stream_names_the_global_index_of_a_bad_item(make_model) -> None:
    model = make_model("echo")
    with pytest.raises(TypeError, match="Input 7 is int"):
        list(model.stream(["a"] * 7 + [3], chunk_size=4))
    with pytest.raises(ValueError, match="chunk_size"):
        list(model.stream(["a"], chunk_size=0))


def test_save_npy_writes_a_memmappable_array(make_model, tmp_path) -> None:
    model = make_model("echo")
    texts = [f"text {i}" for i in range(37)] + ["", "last one"]
    rows, dim = save_npy(model.stream(iter(texts), chunk_size=8), tmp_path / "v.npy")
    stored = np.load(tmp_path / "v.npy", mmap_mode="r")
    assert isinstance(stored, np.memmap) and stored.shape == (rows, dim) == (len(texts), model[0].engine.hidden_size)
    assert_same(torch.from_numpy(np.array(stored)), model.encode(texts, convert_to_tensor=True))
    assert save_npy(iter([]), tmp_path / "empty.npy") == (0, 0)
    assert np.load(tmp_path / "empty.npy").shape == (0, 0)


def test_cli_embed_streams_a_text_file(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import helpers as testing
    from echo_embeddings import cli

    folder = testing.save_tiny_model(tmp_path / "tiny")
    corpus = tmp_path / "corpus.tsv"
    corpus.write_text("id\ttext\n1\tA dog runs.\n2\t\n3\tCats sleep all day.\n", encoding="utf-8")
    out = tmp_path / "vectors.npy"
    assert cli.main(["embed", str(corpus), "--column", "text", "--out", str(out), "--model", str(folder), "--chunk-size", "2"]) == 0
    vectors = np.load(out, mmap_mode="r")
    assert vectors.shape[0] == 3
    expected = echo_embeddings.load(str(folder), "echo", device="cpu")[0].engine.encode(["A dog runs.", "", "Cats sleep all day."])
    assert_same(torch.from_numpy(np.array(vectors)), expected)
    assert cli.main(["embed", str(corpus), "--column", "nope", "--out", str(out), "--model", str(folder)]) == 2


def test_packing_stays_off_where_it_would_change_results(make_model) -> None:
    gemma2 = make_model("echo", arch="gemma2")[0].engine
    assert gemma2.packing_kernel is None  # soft-capped attention keeps padded batches
    with pytest.raises(ValueError, match="does not support packed"):
        variant(gemma2, packing=True)
    gemma3 = make_model("raw-mean", arch="gemma3")[0].engine  # a sliding window of 16 tokens
    assert not gemma3.tokenize(["a sentence long enough to pass the sliding window " * 2]).packed
    assert gemma3.tokenize(["hi", "a dog"]).packed


def test_the_prefix_cache_follows_fused_optimizer_steps(make_model) -> None:
    """torch's fused AdamW (the transformers Trainer's default) updates weights without bumping
    their version counters; a cached prefix must still be recomputed after a step."""
    model = make_model("echo")
    texts = ["A man is playing a guitar.", "Dogs run."]
    model.encode(texts)  # fills the cache
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    engine = model[0].engine
    engine.forward(engine.tokenize(texts)).pow(2).sum().backward()
    optimizer.step()
    cached = model.encode(texts, convert_to_tensor=True)
    engine.prefix_cache = False
    assert torch.allclose(cached, model.encode(texts, convert_to_tensor=True), atol=1e-5)
