"""Queries the model writes for an unlabelled corpus (``train --queries-from``), on tiny random
models: batched, seeded generation that stops where it should, the round-trip filter and its hard
negatives on a constructed case, the pairs file, training on the result, and bad corpus rows
reported before any model work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import echo_embeddings
from echo_embeddings import cli, training
from echo_embeddings.data import DataError, Passage, read_passages
from echo_embeddings.training import generated_queries as gq
from helpers import bpe_tokenizer, save_tiny_model

PASSAGES = [
    Passage("a", "Cats sleep for most of the day and hunt at night."),
    Passage("b", "The stock market fell sharply after the bank reported losses.", "Markets"),
    Passage("c", "Rain is expected across the north with strong winds by evening."),
    Passage("d", "Echo embeddings repeat the text and pool the second copy."),
]


@pytest.fixture(scope="module")
def generator_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random causal LM (with its LM head) and the BPE tokenizer, no chat template."""
    folder = tmp_path_factory.mktemp("generator")
    tokenizer = bpe_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def generator(generator_folder: Path):
    return gq.load_generator(str(generator_folder), device="cpu", dtype="float32")


def test_generation_is_batched_seeded_and_stops_at_a_newline_or_the_cap(generator, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = generator
    calls, outputs = [], []
    original = model.generate
    monkeypatch.setattr(model, "generate", lambda **k: calls.append(k) or outputs.append(original(**k)) or outputs[-1])
    greedy = gq.generate_queries(model, tokenizer, PASSAGES, batch_size=2, max_new_tokens=6, drop_unfinished=False, show_progress_bar=False)
    assert len(calls) == 2 and calls[0]["input_ids"].shape[0] == 2  # two batches of two, one generate call each
    assert tokenizer.convert_tokens_to_ids(tokenizer.tokenize("\n"))[0] in calls[0]["eos_token_id"]
    assert greedy == gq.generate_queries(model, tokenizer, PASSAGES, batch_size=2, max_new_tokens=6, drop_unfinished=False, show_progress_bar=False)
    assert all(out.shape[1] - call["input_ids"].shape[1] <= 6 for call, out in zip(calls, outputs))  # the length cap
    assert all("\n" not in query for queries in greedy for query in queries)
    state = torch.random.get_rng_state()
    sampled = gq.generate_queries(model, tokenizer, PASSAGES, per_passage=3, seed=1, max_new_tokens=6, drop_unfinished=False, show_progress_bar=False)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is left alone
    assert sampled == gq.generate_queries(model, tokenizer, PASSAGES, per_passage=3, seed=1, max_new_tokens=6, drop_unfinished=False, show_progress_bar=False)
    assert sampled != gq.generate_queries(model, tokenizer, PASSAGES, per_passage=3, seed=2, max_new_tokens=6, drop_unfinished=False, show_progress_bar=False)
    assert all(len(q) <= 3 for q in sampled) and sum(map(len, sampled)) > len(PASSAGES)


def test_a_query_that_runs_to_the_cap_without_ending_is_left_out_and_counted(generator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    model, tokenizer = generator
    newline = tokenizer.convert_tokens_to_ids(tokenizer.tokenize("\n"))[0]
    words = tokenizer("cats sleep all day long", add_special_tokens=False)["input_ids"][:4]
    # The first two passages end their query with a newline, the other two run to the cap of four tokens.
    endings = {0: [*words[:2], newline, tokenizer.pad_token_id], 1: [*words[:3], newline], 2: words, 3: words}

    def generate(input_ids, **kwargs):
        prompts = tokenizer.batch_decode(input_ids, skip_special_tokens=True)  # rows come longest prompt first
        rows = [endings[next(i for i, p in enumerate(PASSAGES) if p.text in prompt)] for prompt in prompts]
        return torch.cat([input_ids, torch.tensor(rows, device=input_ids.device)], dim=1)

    monkeypatch.setattr(model, "generate", generate)
    with caplog.at_level("WARNING", logger="echo_embeddings.training.generated_queries"):
        dropped = gq.generate_queries(model, tokenizer, PASSAGES, batch_size=4, max_new_tokens=4, show_progress_bar=False)
    assert [bool(q) for q in dropped] == [True, True, False, False]
    assert dropped[0] == [tokenizer.decode(words[:2]).strip()]
    assert "2 of 4 generated queries ran to max_new_tokens=4 without ending" in caplog.text
    kept = gq.generate_queries(model, tokenizer, PASSAGES, batch_size=4, max_new_tokens=4, drop_unfinished=False, show_progress_bar=False)
    assert kept[:2] == dropped[:2] and kept[2] == kept[3] == [tokenizer.decode(words).strip()]


def test_the_shared_examples_run_once_and_change_nothing(generator, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = generator
    head, rest = gq.split_prompt(tokenizer)
    for passage in PASSAGES:  # the cut prompt tokenizes as the whole one
        whole = tokenizer(gq.prompt_for(tokenizer, passage.text))["input_ids"]
        assert head + tokenizer(rest.format(passage=passage.text), add_special_tokens=False)["input_ids"] == whole
    forwards = []
    monkeypatch.setattr(model, "forward", lambda *a, _f=model.forward, **k: forwards.append(k["input_ids"].shape) or _f(*a, **k))
    cached = gq.generate_queries(model, tokenizer, PASSAGES, batch_size=2, max_new_tokens=6, drop_unfinished=False, show_progress_bar=False)
    assert forwards[0] == (1, len(head))  # the examples once; each batch then starts after them
    assert all(shape[1] < len(head) for shape in forwards[1:])
    assert cached == gq.generate_queries(model, tokenizer, PASSAGES, batch_size=2, max_new_tokens=6, prefix_cache=False, drop_unfinished=False, show_progress_bar=False)


def test_a_checkpoint_without_an_lm_head_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lacks .*lm_head.*name a full causal LM"):
        gq.load_generator(str(save_tiny_model(tmp_path / "bare")), device="cpu")  # a bare decoder, untied head


def test_prompts_and_cleaning(generator) -> None:
    _, tokenizer = generator
    plain = gq.prompt_for(tokenizer, "Some passage.")
    assert plain.endswith("Passage: Some passage.\nQuery:") and plain.count("Query:") == len(gq.FEW_SHOT) + 1
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    try:
        chat = gq.prompt_for(tokenizer, "Some passage.")
    finally:
        tokenizer.chat_template = None
    assert chat.count("<user>") == len(gq.FEW_SHOT) + 1 and chat.endswith("Some passage.\n\nWrite one short question that this passage answers.\n<assistant>")
    assert gq.clean_query(' Query: "why do cats sleep"\nmore text') == "why do cats sleep"
    assert gq.clean_query("1. how rain forms") == "how rain forms" and gq.clean_query("\n") == ""


class Vectors:
    """An embedder whose vectors are given: passage i is axis i; queries are listed rows."""

    def __init__(self, queries: dict[str, list[float]]):
        self.queries = queries

    def encode_document(self, texts, **kwargs):
        return np.eye(len(texts), 4)

    def encode_query(self, texts, **kwargs):
        rows = np.array([self.queries[t] for t in texts], dtype=float)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_round_trip_keeps_queries_that_find_their_passage_and_mines_the_best_other_one() -> None:
    embedder = Vectors({"finds a": [1, 0.5, 0, 0], "finds c second": [0, 0, 0.6, 1], "finds nothing of b": [0, 0.1, 1, 0.9]})
    queries = [["finds a"], ["finds nothing of b"], ["finds c second"], []]
    rows = gq.round_trip(embedder, PASSAGES, queries, top_k=2, hard_negatives=True, ranker="embedder", show_progress_bar=False)
    by_query = {r.query: r for r in rows}
    assert (by_query["finds a"].rank, by_query["finds a"].kept, by_query["finds a"].negative_id) == (1, True, "b")
    assert (by_query["finds c second"].rank, by_query["finds c second"].kept, by_query["finds c second"].negative_id) == (2, True, "d")
    assert (by_query["finds nothing of b"].rank, by_query["finds nothing of b"].kept) == (3, False)
    strict = gq.round_trip(embedder, PASSAGES, queries, top_k=1, hard_negatives=False, ranker="embedder", show_progress_bar=False)
    assert [r.query for r in strict if r.kept] == ["finds a"] and strict[0].negative_id is None
    data = gq.training_data(PASSAGES, rows, "test")
    assert data.kind == "triplets" and data.rows[0] == ("finds a", PASSAGES[0].text, "Markets. " + PASSAGES[1].text)
    with pytest.raises(DataError, match="1 of 3 generated queries passed"):
        gq.training_data(PASSAGES, strict, "test")


def test_bm25_scores_as_the_formula_and_can_rank_the_round_trip() -> None:
    from echo_embeddings.training.bm25 import BM25

    (scores,) = list(BM25(["a b", "A c, c"]).scores(["c", "b a", "zebra"]))
    idf_c = np.log1p((2 - 1 + 0.5) / (1 + 0.5))
    assert scores[0] == pytest.approx([0, 2 * 2.2 / (2 + 1.2 * (0.25 + 0.75 * 3 / 2.5)) * idf_c], rel=1e-6)
    assert scores[1, 0] > scores[1, 1] > 0 and not scores[2].any()  # words lower-cased; an unknown word scores nothing
    queries = [["cats hunt at night"], ["bank losses"], ["zebra"], ["pool the second copy", "echo"]]
    rows = gq.round_trip(None, PASSAGES, queries, top_k=1, hard_negatives=True, ranker="bm25", show_progress_bar=False)
    assert [(r.query, r.rank, r.kept, r.negative_id) for r in rows] == [
        ("cats hunt at night", 1, True, "b"),  # the others tie at zero: the first of them
        ("bank losses", 1, True, "a"),
        ("zebra", 4, False, None),  # no shared word: ties count against it, so it ranks last
        ("pool the second copy", 1, True, "b"),
        ("echo", 1, True, "a"),
    ]
    with pytest.raises(ValueError, match="ranker must be"):
        gq.round_trip(None, PASSAGES, queries, ranker="splade", show_progress_bar=False)


def test_the_recipe_writes_the_pairs_file_and_its_triplets_train(generator_folder: Path, tmp_path: Path) -> None:
    model = echo_embeddings.load(str(save_tiny_model(tmp_path / "embedder")), "echo", device="cpu")
    passages = [Passage(f"p{i}", f"Passage number {i} is about {topic} and little else.") for i, topic in enumerate(["cats", "rain", "stocks", "bread"] * 3)]
    lengths = []
    encode_document = model.encode_document
    model.encode_document = lambda texts, **k: lengths.append(model.max_seq_length) or encode_document(texts, **k)
    data = gq.queries_from_corpus(
        model, passages, generator=str(generator_folder), per_passage=2, top_k=12, hard_negatives=True, ranker="embedder", pairs_out=tmp_path / "pairs.jsonl", filter_max_seq_length=48, drop_unfinished=False, show_progress_bar=False
    )
    del model.encode_document
    assert lengths == [48] and model.max_seq_length != 48  # the filter's prompts cut as training will cut them, then put back
    rows = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert rows and set(rows[0]) == {"passage_id", "query", "rank", "kept", "negative_id"}
    assert all(r["kept"] and r["negative_id"] != r["passage_id"] for r in rows)  # top_k = the corpus size keeps all
    assert data.kind == "triplets" and len(data) == len(rows)
    from transformers import TrainerCallback

    losses = []

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    training.train(model, data, tmp_path / "out", max_steps=8, batch_size=4, learning_rate=5e-3, show_progress_bar=False, callbacks=[Losses()])
    assert len(losses) >= 4 and sum(losses[-2:]) < sum(losses[:2])


def test_a_sample_of_passages_gets_queries_and_every_passage_still_ranks(generator_folder: Path, tmp_path: Path) -> None:
    model = echo_embeddings.load(str(save_tiny_model(tmp_path / "embedder")), "echo", device="cpu")
    passages = [Passage(f"p{i}", f"Passage {i} tells of {topic} {i}.") for i, topic in enumerate(["cats", "rain", "stocks", "bread"] * 3)]
    asked: list[list[str]] = []
    generate = gq.generate_queries

    def spy(writer, tokenizer, chosen, **kwargs):
        asked.append([p.id for p in chosen])
        return [[f"what of {p.text.split()[-2]} {p.id[1:]}"] for p in chosen]  # each query names its passage's words

    def recipe(seed: int) -> list[dict]:
        out = tmp_path / f"pairs{seed}.jsonl"
        gq.queries_from_corpus(model, passages, generator=str(generator_folder), max_passages=5, top_k=1, hard_negatives=True, pairs_out=out, seed=seed, show_progress_bar=False)
        return [json.loads(line) for line in out.read_text().splitlines()]

    gq.generate_queries = spy
    try:
        first, again = recipe(0), recipe(0)
        recipe(1)
        default = gq.queries_from_corpus(model, passages, generator=str(generator_folder), max_passages=5, top_k=1, show_progress_bar=False)
    finally:
        gq.generate_queries = generate
    assert len(asked[0]) == 5 and asked[0] == sorted(asked[0], key=lambda i: int(i[1:]))  # five, in corpus order
    assert first == again and asked[0] == asked[1] and asked[2] != asked[0]  # the sample follows the seed
    assert [r["passage_id"] for r in first] == asked[0]
    # Ranked against all twelve: the hard negative may be a passage that got no query.
    assert all(r["kept"] and r["rank"] == 1 for r in first)
    assert {r["negative_id"] for r in first} - set(asked[0])
    assert default.kind == "pairs" and len(default) == 5  # hard negatives are asked for, not the default
    with pytest.raises(ValueError, match="max_passages must be at least 1"):
        gq.queries_from_corpus(model, passages, generator=str(generator_folder), max_passages=0)


def test_corpus_files_are_read_whole_and_bad_rows_are_named(tmp_path: Path) -> None:
    text = tmp_path / "paragraphs.txt"
    text.write_text("First paragraph,\nwrapped.\n\n\nSecond one.\n")
    assert [(p.id, p.text, p.where) for p in read_passages(text)] == [("p0", "First paragraph, wrapped.", f"{text}:1"), ("p1", "Second one.", f"{text}:5")]
    good = tmp_path / "corpus.jsonl"
    good.write_text('{"_id": "x", "title": "T", "text": "Body."}\n{"_id": "y", "text": "Other."}\n')
    assert [(p.id, p.title) for p in read_passages(good)] == [("x", "T"), ("y", "")]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["One.", "Two."]}), tmp_path / "c.parquet")
    assert [(p.id, p.text) for p in read_passages(tmp_path / "c.parquet", "body")] == [("0", "One."), ("1", "Two.")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"_id": "x", "text": "Fine."}\n{"_id": "y", "title": "No text"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: expected a non-empty text in 'text', got no such field"):
        read_passages(bad)
    bad.write_text('{"_id": "x", "text": "Fine."}\n{"_id": "x", "text": "Again."}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: id 'x' was already used at .*bad.jsonl:1"):
        read_passages(bad)


def test_the_cli_reports_a_bad_corpus_before_loading_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr("echo_embeddings.api.load", lambda *a, **k: pytest.fail("weights were loaded"))
    monkeypatch.setattr(gq, "load_generator", lambda *a, **k: pytest.fail("the generator was loaded"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"_id": "x", "text": "Fine."}\n\n{"_id": "y", "text": 3}\n')
    assert cli.main(["train", "--queries-from", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "bad.jsonl:3: expected a non-empty text in 'text', got int 3" in capsys.readouterr().err
    good = tmp_path / "good.txt"
    good.write_text("A paragraph.\n\nAnother.\n")
    assert cli.main(["train", "--queries-from", str(good), "--pairs-out", str(tmp_path / "no" / "p.jsonl"), "--out", str(tmp_path / "out")]) == 2
    assert "--pairs-out" in capsys.readouterr().err
    assert cli.main(["train", "--queries-from", str(good), "--max-passages", "-1", "--out", str(tmp_path / "out")]) == 2
    assert "--max-passages -1: give a number of passages, or 0 for all" in capsys.readouterr().err
