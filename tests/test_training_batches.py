"""Token-budget training batches: every row once an epoch, both limits kept, no text twice in a
batch of in-batch negatives, lengths as the forward counts them, and the trainer running on them."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback

import echo_embeddings
from echo_embeddings import training
from echo_embeddings.training.batches import TokenBudgetBatchSampler, row_lengths, token_budget_sampler
from helpers import save_tiny_model


def sampler(lengths, texts=None, batch_size=4, max_tokens=100, **kwargs) -> TokenBudgetBatchSampler:
    texts = texts or [f"text {i}" for i in range(len(lengths))]
    data = Dataset.from_dict({"anchor": texts, "positive": [f"other {t}" for t in texts]})
    return TokenBudgetBatchSampler(data, batch_size, False, lengths=lengths, max_tokens=max_tokens, **kwargs)


def test_every_row_once_an_epoch_within_both_limits() -> None:
    lengths = [(i * 37) % 90 + 5 for i in range(200)] + [500]  # the last row alone exceeds the budget
    s = sampler(lengths, pool_batches=5)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(201)) and len(s) == len(batches)
    for b in batches:
        assert len(b) <= 4 and (sum(lengths[i] for i in b) <= 100 or len(b) == 1)
    assert [200] in batches
    assert list(s) == batches  # same seed and epoch: same batches
    s.set_epoch(1)
    assert list(s) != batches


def test_no_text_twice_in_a_batch_of_in_batch_negatives() -> None:
    texts = ["same"] * 6 + [f"text {i}" for i in range(10)]
    batches = list(sampler([10] * 16, texts, no_duplicates=True))
    assert sorted(i for b in batches for i in b) == list(range(16))
    for b in batches:
        assert sum(texts[i] == "same" for i in b) <= 1
    with pytest.raises(ValueError, match="lengths has 3 entries for a dataset of 16 rows"):
        sampler([10] * 3, texts)


def test_row_lengths_are_what_the_forward_computes(make_model) -> None:
    model = make_model("echo")
    texts = ["A man is playing a guitar.", "Dogs run.", "The market fell sharply today, and then rose."]
    lengths = row_lengths(model, {"anchor": texts, "positive": texts}, training.ROUTES)
    engine = model[0].engine
    computed = [0] * len(texts)
    for task in ("query", "document"):
        for i, text in enumerate(texts):
            batch = engine.tokenize([text], task)
            computed[i] += int(batch.cu_seqlens[-1]) if batch.packed else int(batch.attention_mask.sum())
    assert lengths == computed


def test_the_trainer_runs_on_token_budget_batches(tmp_path, monkeypatch) -> None:
    model = echo_embeddings.load(str(save_tiny_model(tmp_path / "base")), "echo", device="cpu")
    rows = [(f"question {i}", "a longer document " * (1 + i % 5) + str(i)) for i in range(24)]
    data = training.TrainingData("pairs", rows, "memory")
    budget = 160
    lengths = row_lengths(model, {"anchor": [r[0] for r in rows], "positive": [r[1] for r in rows]}, training.ROUTES)
    assert max(lengths) <= budget < sum(lengths) / 3  # the budget, not batch_size, cuts the batches
    served = []
    iterate = TokenBudgetBatchSampler.__iter__

    def recording(self):
        for batch in iterate(self):
            served.append(batch)
            yield batch

    monkeypatch.setattr(TokenBudgetBatchSampler, "__iter__", recording)
    steps = []

    class Steps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps.append(state.global_step)

    training.train(model, data, tmp_path / "out", batch_size=8, max_batch_tokens=budget, lora_layers=[2, 3], show_progress_bar=False, callbacks=[Steps()])
    assert sorted(i for b in served for i in b) == list(range(24))  # one epoch, every row once
    assert len(steps) == len(served) > 24 // 8
    assert all(sum(lengths[i] for i in b) <= budget and len(b) <= 8 for b in served)


def test_gradient_checkpointing_trains_to_the_same_adapter(tmp_path) -> None:
    base = save_tiny_model(tmp_path / "base")
    rows = [(f"A dog runs in the park {i}.", f"A dog is running {i}.", float(i % 5)) for i in range(8)]
    adapters = []
    for checkpointing in (False, True):
        model = echo_embeddings.load(str(base), "echo", device="cpu")
        training.train(
            model, training.TrainingData("scored", rows, "memory"), tmp_path / f"out{checkpointing}", max_steps=2, batch_size=4,
            lora_layers=[1, 2, 3], gradient_checkpointing=checkpointing, reuse_frozen=False, show_progress_bar=False,
        )
        adapters.append({n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n})
    assert adapters[0].keys() == adapters[1].keys() and adapters[0]
    assert all(torch.allclose(adapters[0][n], adapters[1][n], atol=1e-4) for n in adapters[0])  # Adam amplifies rounding
    assert any(p.abs().sum() > 0 for n, p in adapters[1].items() if "lora_B" in n)


def test_checkpointing_with_the_prefix_cache_on_fails_clearly(make_model) -> None:
    """The stock trainer with gradient checkpointing: the cached prefix would be dropped by the
    checkpointed layers, so the forward refuses instead of computing wrong vectors."""
    model = make_model("echo")
    model.activation_checkpointing_enable()
    model.train()
    module = model[0]
    with pytest.raises(ValueError, match=r"set model\[0\]\.engine\.prefix_cache = False"):
        module.forward(module.preprocess(["A man is playing a guitar.", "Dogs run."]))
    module.engine.prefix_cache = False
    assert module.forward(module.preprocess(["A man is playing a guitar.", "Dogs run."]))["sentence_embedding"].requires_grad
