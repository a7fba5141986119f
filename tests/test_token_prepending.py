"""Token prepending and early exit: against an explicit reference loop, across threads, layer by layer."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import echo_embeddings
from conftest import ARCHITECTURES
from echo_embeddings import Engine, LayerPlan
from echo_embeddings.engine.forward import forward_hidden
from echo_embeddings.engine.model_parts import UnsupportedModelError, decoder_layers
from echo_embeddings.engine.defaults import preset_defaults

TEXTS = ["A man is playing a guitar.", "Hi", "Someone plays an instrument on the stage while the crowd sings.", ""]


def _embedder(make_model, strategy: str, arch: str = "llama", **options) -> Engine:
    return make_model(strategy, arch=arch, **options)[0].engine


def test_start_equal_to_stop_is_the_base_preset_exactly(make_model) -> None:
    model = make_model("prompteol")
    base = model[0].engine.encode(TEXTS)
    off = Engine(model[0].model, model[0].tokenizer, "prompteol+tp", tp_layers=(2, 2), output_layer=-1)
    assert torch.equal(off.encode(TEXTS), base)
    on = Engine(model[0].model, model[0].tokenizer, "prompteol+tp", tp_layers=(1, 3), output_layer=-1)
    assert not torch.allclose(on.encode(TEXTS), base)


def _reference(model: nn.Module, embedder: Engine, text: str, start: int, stop: int, output: int) -> torch.Tensor:
    """Layer by layer, one unpadded text, the placeholder overwritten by hand (Llama layout)."""
    ((row,),) = embedder.prepare([text])
    ids = torch.tensor([row.ids])
    positions = torch.arange(ids.shape[1])[None]
    hidden = model.embed_tokens(ids)
    rotary = model.rotary_emb(hidden, positions)
    last = row.pooled[-1]
    for i, layer in enumerate(model.layers[:output]):
        if start <= i < stop:
            hidden = hidden.clone()
            hidden[0, row.placeholder] = hidden[0, last]
        hidden = layer(hidden, attention_mask=None, position_ids=positions, position_embeddings=rotary)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    if output == len(model.layers):
        hidden = model.norm(hidden)
    return hidden[0, last]


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize(("start", "stop", "output"), [(1, 3, 4), (0, 2, 3), (1, 4, 2)])
def test_hooked_forward_matches_the_reference_loop(make_model, padding_side: str, start: int, stop: int, output: int) -> None:
    model = make_model("prompteol+tp", tp_layers=(start, stop), output_layer=output)
    embedder = model[0].engine
    embedder.padding_side = padding_side
    with torch.no_grad():
        batched = embedder.encode(TEXTS, batch_size=4)
        expected = torch.stack([_reference(model[0].model, embedder, t, start, stop, output) for t in TEXTS])
    assert (batched - expected).abs().max().item() <= 1e-5


TP_CASES = [(arch, "prompteol+tp") for arch in sorted(ARCHITECTURES)] + [
    (arch, strategy) for arch in ("llama", "gpt2") for strategy in ("pcot+tp", "ke+tp", "metaeol+tp")
]


@pytest.mark.parametrize(("arch", "strategy"), TP_CASES)
def test_batch_invariance_with_token_prepending(make_model, arch: str, strategy: str) -> None:
    embedder = _embedder(make_model, strategy, arch=arch)
    assert embedder.plan.token_prepending
    together = embedder.encode(TEXTS, batch_size=4)
    alone = torch.cat([embedder.encode([t]) for t in TEXTS])
    assert (together - alone).abs().max().item() <= 1e-4


def test_two_threads_with_different_settings(make_model) -> None:
    model = make_model("prompteol+tp", tp_layers=(1, 3), output_layer=3)
    a = model[0].engine
    b = Engine(a.model, a.tokenizer, "pcot+tp", tp_layers=(0, 2), output_layer=2)
    expected = {id(a): a.encode(TEXTS), id(b): b.encode(TEXTS)}
    errors: list[str] = []

    def work(embedder: Engine) -> None:
        try:
            for _ in range(15):
                if not torch.allclose(embedder.encode(TEXTS, batch_size=2), expected[id(embedder)], atol=1e-6):
                    errors.append("wrong vectors under concurrency")
        except Exception as exc:  # a crash in a thread must fail the test too
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(e,)) for e in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(not layer._forward_pre_hooks for layer in decoder_layers(a.model)), "hooks live only during a forward"


def test_early_exit_never_calls_later_layers(make_model) -> None:
    model = make_model("echo", output_layer=2)
    calls: list[str] = []
    layers = decoder_layers(model[0].model)
    for i, layer in enumerate(layers):
        layer.register_forward_hook(lambda *_, i=i: calls.append(f"layer{i}"))
    model[0].model.norm.register_forward_hook(lambda *_: calls.append("norm"))
    model[0].engine.encode(TEXTS)
    assert set(calls) == {"layer0", "layer1"}
    calls.clear()
    model[0].final_norm = True
    model[0].engine.encode(TEXTS[:1])
    assert calls == ["layer0", "layer1", "norm"]


@pytest.mark.parametrize("output_layer", [-1, -2, -4, 1, 3])
def test_intermediate_layers_match_output_hidden_states(make_model, arch: str, output_layer: int) -> None:
    model = make_model("echo", arch=arch, output_layer=output_layer)
    embedder = model[0].engine
    (item,) = embedder.prepare(["Dogs run in the park."])
    embedder.prefix_cache = False
    batch = embedder.collate([item], "mean")  # the whole prompt, for the reference
    embedder.prefix_cache = True
    with torch.no_grad():
        states = embedder.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True).hidden_states
        expected = states[output_layer][0][item[0].pooled].mean(0)
        actual = embedder.encode(["Dogs run in the park."])[0]
    assert (actual - expected).abs().max().item() <= 1e-5


def test_output_layer_out_of_range(make_model) -> None:
    with pytest.raises(ValueError, match="outside this model's hidden states"):
        make_model("echo", output_layer=9)[0].engine.encode(["x"])


def test_tp_layers_need_a_tp_strategy(make_model) -> None:
    with pytest.raises(ValueError, match="'\\+tp' strategy"):
        make_model("prompteol", tp_layers=(1, 3))


def test_unsupported_model_names_what_is_missing() -> None:
    class Flat(nn.Module):
        config = type("C", (), {"num_hidden_layers": 2, "model_type": "flat"})()

    with pytest.raises(UnsupportedModelError, match="no list of decoder layers"):
        decoder_layers(Flat())
    with pytest.raises(UnsupportedModelError):
        forward_hidden(Flat(), torch.ones(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.long), LayerPlan(1), torch.zeros(1, dtype=torch.long))


def test_defaults_table_and_fallback(make_model) -> None:
    model = make_model("prompteol+tp")[0]
    fallback = preset_defaults(model.model)
    assert (fallback.tp_start, fallback.tp_stop, fallback.output_layer) == (1, 2, -2)
    assert model.tp_layers == (1, 2) and model.output_layer == -2


def test_save_load_keeps_tp_settings(make_model, tmp_path) -> None:
    model = make_model("pcot+tp", arch="qwen3", tp_layers=(1, 3), output_layer=3, placeholder_token="A")
    before = model.encode(TEXTS, convert_to_tensor=True)
    model.save(str(tmp_path / "tp"))
    again = echo_embeddings.load(str(tmp_path / "tp"), device="cpu")
    assert again[0].tp_layers == (1, 3) and again[0].output_layer == 3 and again[0].strategy == "pcot+tp"
    assert torch.equal(again.encode(TEXTS, convert_to_tensor=True), before)


def test_model_at_rest_pickles(make_model) -> None:
    import pickle

    model = make_model("prompteol+tp")
    model.encode(TEXTS)
    clone = pickle.loads(pickle.dumps(model))
    assert torch.allclose(clone.encode(TEXTS, convert_to_tensor=True), model.encode(TEXTS, convert_to_tensor=True))


def test_table_defaults_per_model_and_preset(bpe_tokenizer) -> None:
    from transformers import AutoModel, Gemma3TextConfig, LlamaConfig

    from echo_embeddings import EchoEmbedder

    small = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=1)
    smollm2_shaped = AutoModel.from_config(LlamaConfig(vocab_size=49152, num_hidden_layers=30, **small))
    assert preset_defaults(smollm2_shaped, "prompteol+tp") == (1, 8, -3)
    for strategy in ("ke+tp", "metaeol+tp"):  # TP off: the base prompt at its layer
        assert preset_defaults(smollm2_shaped, strategy) == (1, 1, -1)
    assert preset_defaults(smollm2_shaped, "pcot+tp") == (1, 1, -3) == (1, 1, preset_defaults(smollm2_shaped, "pcot").output_layer)
    assert preset_defaults(smollm2_shaped, "echo") == (0, 0, -3)  # tuned output layer, no TP
    assert preset_defaults(smollm2_shaped, "prompteol") == (0, 0, -1)  # not in the row: the final layer
    assert EchoEmbedder(strategy="echo", model=smollm2_shaped, tokenizer=bpe_tokenizer).output_layer == -3
    assert EchoEmbedder(strategy="{x}", pooling="mean", model=smollm2_shaped, tokenizer=bpe_tokenizer).output_layer == -1
    gemma_shaped = AutoModel.from_config(Gemma3TextConfig(vocab_size=262144, num_hidden_layers=18, head_dim=8, **small)).eval()
    with pytest.warns(UserWarning, match="Token prepending is off by default for this model"):
        module = EchoEmbedder(strategy="prompteol+tp", model=gemma_shaped, tokenizer=bpe_tokenizer)
    assert module.tp_layers == (1, 1) and not module.engine.plan.token_prepending
    base = EchoEmbedder(strategy="prompteol", model=gemma_shaped, tokenizer=bpe_tokenizer)
    assert torch.equal(module.engine.encode(TEXTS), base.engine.encode(TEXTS))
    assert preset_defaults(gemma_shaped, "echo") == (0, 0, -3)
