"""One source of truth for settings, one encode path through the whole module list, and a borrowed
model left as it was handed to us."""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch

import echo_embeddings
from echo_embeddings import EchoEmbedder, EchoSentenceTransformer, Engine
from echo_embeddings.engine.packing import register_packed_attention

IMPLEMENTATION = register_packed_attention()
from helpers import save_dense_model, tiny_decoder

TEXTS = ["A man is playing a guitar.", "Hi", "", "Someone plays an instrument on the stage while the crowd sings along."]


def reload(model: EchoSentenceTransformer, folder) -> EchoSentenceTransformer:
    model.save(str(folder))
    return echo_embeddings.load(str(folder), device="cpu")


# Each exposed setting, changed after construction: (strategy to build with, setting, new value).
CHANGES = [
    ("echo", "output_layer", 2),
    ("echo", "final_norm", True),  # with an intermediate output layer below
    ("echo", "instruction", "Find the duplicate question"),
    ("echo", "max_seq_length", 24),
    ("echo", "strategy", "prompteol"),
    ("prompteol+tp", "tp_layers", (0, 3)),
    ("prompteol+tp", "placeholder_token", "A"),
    ("Say {x} in one word:", "pooling", "mean"),
    ("echo", "max_batch_tokens", 64),
]


@pytest.mark.parametrize(("strategy", "setting", "value"), CHANGES, ids=[c[1] for c in CHANGES])
def test_a_setting_changed_after_loading_takes_effect_and_is_saved(make_model, tmp_path, strategy: str, setting: str, value) -> None:
    model = make_model(strategy, output_layer=2 if setting == "final_norm" else None, pooling="last" if "{" in strategy else None)
    task = "query" if setting == "instruction" else None
    before = model.encode(TEXTS, task=task, convert_to_tensor=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_seq_length=24 truncates on purpose
        setattr(model[0], setting, value)
        assert getattr(model[0], setting) == value
        live = model.encode(TEXTS, task=task, convert_to_tensor=True)
        if setting != "max_batch_tokens":  # the budget changes batches, never vectors
            assert not torch.allclose(live, before, atol=1e-4), f"setting {setting} had no effect"
        config = json.loads(json.dumps(model[0].get_config_dict()))
        again = reload(model, tmp_path / "saved")
        assert json.loads((tmp_path / "saved" / "echo_embeddings_config.json").read_text())[setting] == config[setting]
        assert (again.encode(TEXTS, task=task, convert_to_tensor=True) - live).abs().max() <= 1e-6


def test_saved_config_is_what_runs(make_model) -> None:
    prompteol = make_model("prompteol")[0].get_config_dict()
    assert prompteol["pooling"] == "last" and prompteol["output_layer"] == -1 and prompteol["tp_layers"] is None
    tp = make_model("prompteol+tp")[0].get_config_dict()
    assert tp["tp_layers"] == [1, 2] and tp["output_layer"] == -2  # the fallback defaults, written out


def test_misuse_fails_clearly(make_model, bpe_tokenizer) -> None:
    module = make_model("prompteol")[0]
    with pytest.raises(ValueError, match="pooling can only be changed for a template string"):
        module.pooling = "mean"
    with pytest.raises(ValueError, match="pools 'last'"):
        make_model("prompteol", pooling="mean")
    with pytest.raises(ValueError, match="outside this model's hidden states"):
        module.output_layer = 9
    with pytest.raises(TypeError, match="output_layer must be an int"):
        module.output_layer = "2"
    with pytest.raises(ValueError, match="'\\+tp' strategy"):
        module.tp_layers = (1, 2)
    with pytest.raises(ValueError, match="max_seq_length must be a positive int"):
        module.max_seq_length = 0
    with pytest.raises(ValueError, match="Unknown strategy"):
        module.strategy = "no-such-preset"
    tp = make_model("prompteol+tp")[0]
    with pytest.raises(ValueError, match="0 <= start <= stop <= 4"):
        tp.tp_layers = (3, 9)
    with pytest.raises(ValueError, match="set tp_layers=None first"):
        tp.tp_layers = (1, 2)
        tp.strategy = "echo"
    with pytest.raises(ValueError, match="exactly one"):
        tp.placeholder_token = "not one token at all"
    with pytest.raises(TypeError, match="needs the texts"):
        make_model("echo").encode()


def test_an_engine_built_for_a_tp_strategy_runs_its_tp_layers(make_model) -> None:
    module = make_model("prompteol")[0]
    engine = Engine(module.model, module.tokenizer, echo_embeddings.get_preset("prompteol+tp"))
    assert engine.plan.token_prepending and engine.tp_layers == (1, 2) and engine.output_layer == -2
    base = Engine(module.model, module.tokenizer, "prompteol", output_layer=-2)
    assert not torch.allclose(engine.encode(TEXTS), base.encode(TEXTS))


def test_every_surface_runs_the_whole_module_list(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from echo_embeddings import cli
    from echo_embeddings.adapter_cache import shared_model

    model = echo_embeddings.load(str(save_dense_model(tmp_path)), device="cpu")
    expected = model.encode(TEXTS, convert_to_tensor=True)
    assert expected.shape == (4, 8) and torch.allclose(expected.norm(dim=1), torch.ones(4), atol=1e-5)
    queries = model.encode_query(TEXTS, convert_to_tensor=True)
    documents = model.encode_document(TEXTS, convert_to_tensor=True)
    assert queries.shape == documents.shape == (4, 8)
    # A text's vector does not depend on its batch or the path that embeds it.
    assert np.allclose(np.concatenate(list(model.stream(TEXTS, chunk_size=3))), expected.numpy(), atol=1e-5)
    assert torch.allclose(model.encode(TEXTS, batch_size=1, convert_to_tensor=True), expected, atol=1e-5)
    adapters = shared_model(str(tmp_path / "dense"), device="cpu")
    assert np.allclose(adapters.encode(TEXTS, "query"), queries.numpy(), atol=1e-5)
    assert np.allclose(adapters.encode(TEXTS, "document"), documents.numpy(), atol=1e-5)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    assert cli.main(["embed", str(corpus), "--model", str(tmp_path / "dense"), "--out", str(tmp_path / "v.npy"), "--chunk-size", "2"]) == 0
    assert np.allclose(np.load(tmp_path / "v.npy"), expected.numpy(), atol=1e-5)


def test_encode_sorts_by_tokens_and_fills_the_token_budget(make_model, monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model("echo")
    texts = ["short", "a much longer text " * 6, "mid length text here", "x"] * 8
    widths: list[tuple[int, int]] = []
    real = model[0].engine.collate

    def spy(items, pooling=None):
        batch = real(items, pooling)
        widths.append((len(items), max(len(item[0].ids) for item in items)))
        return batch

    monkeypatch.setattr(model[0].engine, "collate", spy)
    model[0].max_batch_tokens = 200
    vectors = model.encode(texts, convert_to_tensor=True)
    assert [w for _, w in widths] == sorted((w for _, w in widths), reverse=True)  # longest first
    assert all(n * w <= 200 or n == 1 for n, w in widths)  # within the budget
    assert sum(n for n, _ in widths) == len(texts)
    alone = torch.cat([model.encode([t], convert_to_tensor=True) for t in texts[:4]])
    assert (vectors[:4] - alone).abs().max() <= 1e-4  # input order restored


def test_a_borrowed_model_is_not_modified(bpe_tokenizer) -> None:
    decoder = tiny_decoder("llama", len(bpe_tokenizer), packed=False)
    tokenizer = copy.deepcopy(bpe_tokenizer)
    tokenizer.pad_token = None
    config_before = decoder.config.to_dict() | {"_attn_implementation": decoder.config._attn_implementation}
    engine = Engine(decoder, tokenizer, "echo")
    assert engine.fast_paths["packing"].startswith("off: the model's attention implementation is 'sdpa'")
    reference = engine.encode(TEXTS)
    assert decoder.config.to_dict() | {"_attn_implementation": decoder.config._attn_implementation} == config_before
    assert tokenizer.pad_token is None and not any(m._forward_pre_hooks for m in decoder.modules())
    with pytest.raises(ValueError, match="attn_implementation='echo_packed'"):
        Engine(decoder, tokenizer, "echo", packing=True)
    # Its owner may choose packed attention; the vectors stay the same.
    decoder.set_attn_implementation(IMPLEMENTATION)
    packed = Engine(decoder, tokenizer, "echo")
    assert packed.fast_paths == {"prefix_cache": "on", "packing": "grouped-sdpa", "precision": "float32"}
    assert (packed.encode(TEXTS) - reference).abs().max() <= 1e-5


def test_packed_attention_is_plain_sdpa_for_everyone_else(make_model) -> None:
    """The registered implementation serves other callers (with masks) exactly as SDPA does."""
    decoder = make_model("echo")[0].model
    assert decoder.config._attn_implementation == IMPLEMENTATION
    stock = tiny_decoder("llama", decoder.config.vocab_size, packed=False)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with torch.no_grad():
        ours, theirs = (m(input_ids=ids, attention_mask=mask).last_hidden_state for m in (decoder, stock))
    assert (ours - theirs)[mask.bool()].abs().max() <= 1e-5


def test_packed_layout_must_reach_every_layer(make_model, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model whose forward drops attention kwargs would mix packed rows: it fails loudly instead."""
    from echo_embeddings.engine import engine as engine_module

    engine = make_model("echo")[0].engine
    real = engine_module.forward_hidden
    monkeypatch.setattr(engine_module, "forward_hidden", lambda *args, echo_packing=None, **kwargs: real(*args, **kwargs))
    with pytest.raises(RuntimeError, match="ran 0 of 4 attention layers without the packed layout"):
        engine.encode(TEXTS)


def test_repr_and_fast_paths_say_what_runs(make_model) -> None:
    module = make_model("echo")[0]
    assert module.engine.fast_paths == {"prefix_cache": "on", "packing": "grouped-sdpa", "precision": "float32"}
    assert "'prefix_cache': 'on'" in repr(module) and "packing='grouped-sdpa'" in repr(module.engine)
    module.engine.prefix_cache = False
    assert module.engine.fast_paths["prefix_cache"] == "off: turned off (prefix_cache=False)"
    gemma2 = make_model("echo", arch="gemma2")[0].engine
    assert gemma2.fast_paths["packing"].startswith("off: Gemma2Model does not support packed batches")


def test_a_strategy_setter_keeps_explicit_layers_and_resets_defaults(make_model) -> None:
    module = make_model("echo")[0]
    module.strategy = "prompteol+tp"
    assert module.tp_layers == (1, 2) and module.output_layer == -2  # defaults of the new strategy
    module.tp_layers = None
    module.strategy = "echo"
    assert module.tp_layers is None and module.output_layer == -1


def test_module_construction_from_a_loaded_model(bpe_tokenizer) -> None:
    module = EchoEmbedder(strategy="echo", model=tiny_decoder("qwen2", len(bpe_tokenizer)), tokenizer=bpe_tokenizer)
    assert module.get_embedding_dimension() == 32 and module.tokenizer is bpe_tokenizer
