"""Late chunking: span mapping, pooling that equals the by-hand computation, macro windows, errors."""

from __future__ import annotations

import warnings
from itertools import pairwise

import numpy as np
import pytest
import torch
from transformers import LlamaConfig

import echo_embeddings
from echo_embeddings import EchoEmbedder, EchoSentenceTransformer
from echo_embeddings.late_chunking import spans_to_tokens, split_by_tokens, tokenize_documents, windows
from helpers import save_dense_model

DOCUMENT = (
    "Berlin is the capital of Germany. Its population is about 3.7 million! The city has many parks.\n\n"
    'A second paragraph: "quoted {braces}" and ünïcode — 🎸 — end. Short.'
)
SHORT = "Dogs run in the park."


def by_hand(model, document: str, spans: list[tuple[int, int]], copies: str = "all", task: str = "document") -> np.ndarray:
    """Each span's vector the slow way: the full prompt through the plain decoder (no cache, no
    packing), then the mean over the tokens that start inside the span, in every copy of the
    document or in the pooled copy only."""
    engine = model[0].engine
    (layout,) = engine.layouts(task)
    ids, offsets = engine.pieces.encode_with_offsets(document, layout.lead)
    prompt, _, _ = layout.build(ids)
    starts = layout.copies(len(ids)) if copies == "all" else [layout.pooled_copy(len(ids))]
    with torch.no_grad():
        hidden = engine.model(input_ids=torch.tensor([prompt])).last_hidden_state[0]
    out = []
    for start, end in spans:
        tokens = [i for i, (a, _) in enumerate(offsets) if start <= a < end]
        out.append(hidden[[c + i for c in starts for i in tokens]].mean(0).numpy())
    return np.stack(out)


@pytest.mark.parametrize("strategy", ["echo", "mean"])
def test_chunks_cover_the_document_in_order(make_model, tokenizer, strategy: str) -> None:
    model = make_model(strategy, tokenizer=tokenizer)
    (chunks,) = model.encode_chunks([DOCUMENT], chunk_tokens=8)
    assert len(chunks) > 3
    assert "".join(c.text for c in chunks) == DOCUMENT
    assert chunks[0].start == 0 and chunks[-1].end == len(DOCUMENT)
    for before, after in pairwise(chunks):
        assert before.end == after.start
    for chunk in chunks:
        assert DOCUMENT[chunk.start : chunk.end] == chunk.text
        assert chunk.embedding.shape == (32,) and chunk.embedding.dtype == np.float32


def test_offsets_match_the_ids_the_engine_reads(make_model, tokenizer) -> None:
    engine = make_model("echo", tokenizer=tokenizer)[0].engine
    for lead in ("", " "):
        ids, offsets = engine.pieces.encode_with_offsets(DOCUMENT, lead)
        assert ids == engine.pieces.encode_inputs([DOCUMENT], lead)[0]
        starts = [a for a, _ in offsets]
        assert starts == sorted(starts) and all(0 <= a <= b <= len(DOCUMENT) for a, b in offsets)
        # Every character is covered by the token it belongs to, in order (the byte-level tokens
        # of one character all carry that character's span).
        distinct = [span for i, span in enumerate(offsets) if i == 0 or span != offsets[i - 1]]
        text = "".join(DOCUMENT[a:b] for a, b in distinct)
        assert text.replace(" ", "") == DOCUMENT.replace(" ", "")


def test_token_chunks_end_at_sentence_ends_and_partition_the_tokens(make_model, tokenizer) -> None:
    engine = make_model("echo", tokenizer=tokenizer)[0].engine
    (doc,) = tokenize_documents(engine, [DOCUMENT])
    spans = split_by_tokens(doc, 12)
    ranges = spans_to_tokens(doc, spans)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(doc.ids)
    assert all(a[1] == b[0] for a, b in pairwise(ranges))
    assert all(stop - start <= 12 for start, stop in ranges)
    # A sentence end in the second half of a chunk ends it there ...
    second = DOCUMENT.index("Its")
    first_of_second = next(i for i, (a, b) in enumerate(doc.offsets) if b > second)
    spans = split_by_tokens(doc, first_of_second + 3)
    assert DOCUMENT[: spans[0][1]] == "Berlin is the capital of Germany. "
    # ... but not in the first half: the chunk is then cut at its token limit.
    assert split_by_tokens(doc, 2 * first_of_second + 6)[0][1] > second


@pytest.mark.parametrize(("strategy", "copies"), [("echo", "all"), ("echo", "pooled"), ("mean", "all")])
def test_late_chunks_equal_pooling_by_hand(make_model, tokenizer, strategy: str, copies: str) -> None:
    model = make_model(strategy, tokenizer=tokenizer)
    assert model[0].engine.fast_paths["prefix_cache"] == "on"
    spans = [(0, 33), (34, 96), (98, 150), (150, len(DOCUMENT))]
    (chunks,) = model.encode_chunks([DOCUMENT], [spans], copies=copies)
    assert [(c.start, c.end) for c in chunks] == spans
    want = by_hand(model, DOCUMENT, spans, copies)
    assert np.abs(np.stack([c.embedding for c in chunks]) - want).max() < 1e-5
    if strategy == "mean":  # one copy: both settings are plain causal late chunking
        (pooled,) = model.encode_chunks([DOCUMENT], [spans], copies="pooled")
        assert all(np.array_equal(a.embedding, b.embedding) for a, b in zip(chunks, pooled))


def test_packed_and_padded_batches_agree(make_model) -> None:
    model = make_model("echo")
    documents = [DOCUMENT, SHORT, DOCUMENT[:70]]
    packed = model.encode_chunks(documents, chunk_tokens=10)
    model[0].engine.packing = False
    model[0].engine.prefix_cache = False
    padded = model.encode_chunks(documents, chunk_tokens=10)
    one_by_one = [model.encode_chunks([d], chunk_tokens=10)[0] for d in documents]
    for a, b, c in zip(packed, padded, one_by_one):
        assert np.abs(np.stack([x.embedding for x in a]) - np.stack([x.embedding for x in b])).max() < 1e-5
        assert np.abs(np.stack([x.embedding for x in b]) - np.stack([x.embedding for x in c])).max() < 1e-5


def test_one_span_over_the_pooled_copy_is_the_document_embedding(make_model) -> None:
    model = make_model("echo")
    documents = [DOCUMENT, SHORT]
    whole = model.encode_chunks(documents, [[(0, len(d))] for d in documents], copies="pooled")
    expected = model.encode(documents, task="document")
    assert np.abs(np.stack([c[0].embedding for c in whole]) - expected).max() < 1e-5


def test_modules_after_the_echo_module_apply(tmp_path) -> None:
    model = echo_embeddings.load(str(save_dense_model(tmp_path)), device="cpu")
    (whole,) = model.encode_chunks([DOCUMENT], [[(0, len(DOCUMENT))]], copies="pooled")
    assert whole[0].embedding.shape == (8,)
    assert np.abs(whole[0].embedding - model.encode_document([DOCUMENT])[0]).max() < 1e-5
    (late,) = model.encode_chunks([DOCUMENT], chunk_tokens=10)
    assert all(abs(np.linalg.norm(c.embedding) - 1) < 1e-5 for c in late)  # Normalize ran


def test_naive_chunks_are_the_chunk_texts_embedded_alone(make_model) -> None:
    model = make_model("echo")
    (naive,) = model.encode_chunks([DOCUMENT], chunk_tokens=10, chunking="naive")
    (late,) = model.encode_chunks([DOCUMENT], chunk_tokens=10)
    assert [(c.start, c.end) for c in naive] == [(c.start, c.end) for c in late]
    expected = model.encode([c.text.strip() for c in naive], task="document")
    assert np.abs(np.stack([c.embedding for c in naive]) - expected).max() < 1e-5
    assert np.abs(np.stack([c.embedding for c in naive]) - np.stack([c.embedding for c in late])).max() > 1e-3


def test_windows_tile_the_tokens() -> None:
    assert windows(10, 20, 4) == [(0, 10, 0, 10)]
    found = windows(100, 30, 10)
    assert found[0][0] == 0 and found[-1][1] == 100
    owned = [t for _, _, a, b in found for t in range(a, b)]
    assert owned == list(range(100))
    for start, stop, own_start, own_stop in found:
        assert start <= own_start < own_stop <= stop and stop - start <= 30
    with pytest.raises(ValueError, match="window_overlap"):
        windows(100, 30, 30)


def test_macro_windows(make_model) -> None:
    model = make_model("echo")
    spans = [(0, 33), (34, 96), (98, len(DOCUMENT))]
    (fits,) = model.encode_chunks([DOCUMENT], [spans])
    (again,) = model.encode_chunks([DOCUMENT], [spans], window_overlap=3)  # one window: the overlap plays no part
    assert all(np.array_equal(a.embedding, b.embedding) for a, b in zip(fits, again))
    # Windows of 20 tokens: each token is pooled from the window that owns it, as by hand.
    engine = model[0].engine
    (layout,) = engine.layouts("document")
    model[0].max_seq_length = layout.fixed_length + 2 * 20
    (doc,) = tokenize_documents(engine, [DOCUMENT])
    assert len(doc.ids) > 40
    (windowed,) = model.encode_chunks([DOCUMENT], [spans], window_overlap=6)
    assert len(windowed) == len(spans)
    plan = windows(len(doc.ids), 20, 6)
    states, states2 = torch.zeros(len(doc.ids), 32), torch.zeros(len(doc.ids), 32)
    for start, stop, own_start, own_stop in plan:
        prompt, _, _ = layout.build(doc.ids[start:stop])
        first, second = layout.copies(stop - start)
        with torch.no_grad():
            hidden = engine.model(input_ids=torch.tensor([prompt])).last_hidden_state[0]
        # Both copies of each owned token: the first copy's state, then the second's.
        states[own_start:own_stop] = hidden[first + own_start - start : first + own_stop - start]
        states2[own_start:own_stop] = hidden[second + own_start - start : second + own_stop - start]
    for (first, stop), chunk in zip(spans_to_tokens(doc, spans), windowed):
        expected = torch.cat([states[first:stop], states2[first:stop]]).mean(0)
        assert torch.allclose(torch.from_numpy(chunk.embedding), expected, atol=1e-5)
    assert np.abs(windowed[1].embedding - fits[1].embedding).max() > 1e-4  # less context than the whole document


def test_stream_chunks_equals_encode_chunks(make_model) -> None:
    model = make_model("echo")
    documents = [DOCUMENT, SHORT, DOCUMENT[40:]] * 3
    streamed = list(model.stream_chunks(iter(documents), documents_per_call=2, chunk_tokens=9))
    direct = model.encode_chunks(documents, chunk_tokens=9)
    assert len(streamed) == len(documents)
    for a, b in zip(streamed, direct):
        assert [(c.start, c.end) for c in a] == [(c.start, c.end) for c in b]
        assert np.abs(np.stack([c.embedding for c in a]) - np.stack([c.embedding for c in b])).max() < 1e-5


def test_bad_inputs_fail_clearly(make_model) -> None:
    model = make_model("echo")
    with pytest.raises(ValueError, match="Document 1 is empty"):
        model.encode_chunks([SHORT, ""])
    with pytest.raises(ValueError, match=r"chunk_spans\[0\]\[1\] = \(5, 99\) is outside document 0"):
        model.encode_chunks([SHORT], [[(0, 5), (5, 99)]])
    with pytest.raises(ValueError, match=r"chunk_spans\[0\]\[1\] = \(3, 8\) overlaps"):
        model.encode_chunks([SHORT], [[(0, 5), (3, 8)]])
    with pytest.raises(ValueError, match=r"chunk_spans\[0\]\[0\] = \(4, 4\) is outside"):
        model.encode_chunks([SHORT], [[(4, 4)]])
    with pytest.raises(ValueError, match="2 entries for 1 documents"):
        model.encode_chunks([SHORT], [[(0, 5)], [(0, 5)]])
    with pytest.raises(TypeError, match=r"chunk_spans\[0\]\[0\] must be a \(start, end\) pair"):
        model.encode_chunks([SHORT], [[(0, 5, 7)]])
    with pytest.raises(TypeError, match="Input 1 is int"):
        model.encode_chunks([SHORT, 3])
    with pytest.raises(ValueError, match="chunking must be 'late' or 'naive'"):
        model.encode_chunks([SHORT], chunking="early")
    with pytest.raises(ValueError, match="chunk_tokens must be a positive int"):
        model.encode_chunks([SHORT], chunk_tokens=0)
    with pytest.raises(ValueError, match="pools the last token"):
        make_model("prompteol").encode_chunks([SHORT])
    with pytest.raises(ValueError, match="copies must be 'all' or 'pooled'"):
        model.encode_chunks([SHORT], copies="second")


def test_long_documents_fit_by_default(bpe_tokenizer) -> None:
    config = LlamaConfig(vocab_size=len(bpe_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192)
    from transformers import AutoModel

    module = EchoEmbedder(strategy="echo", model=AutoModel.from_config(config), tokenizer=bpe_tokenizer)
    assert module.max_seq_length == 4096  # LlamaIndex's 1,024-token chunks fit whole, twice over
    model = EchoSentenceTransformer(modules=[module], device="cpu")
    document = " ".join(["Dogs run in the park."] * 200)  # about 1,200 tokens here
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing truncated
        model.encode([document])
    module.max_seq_length = 256
    with pytest.warns(UserWarning, match="truncated"):
        model.encode([document])


@pytest.mark.parametrize("strategy", ["echo", "mean"])
def test_token_embeddings_are_the_pooled_copys_states(make_model, strategy: str) -> None:
    """``encode(output_value="token_embeddings")``: a row per token of the text itself, whose mean is
    the sentence embedding and whose span means are the pooled-copy late chunks of those spans."""
    model = make_model(strategy)
    texts = ["A man is playing a guitar on stage tonight.", "", "Dogs run."]
    states = model.encode(texts, output_value="token_embeddings")
    docs = tokenize_documents(model[0].engine, [texts[0], texts[2]], None)
    assert [s.shape for s in states] == [(len(docs[0].ids), 32), (0, 32), (len(docs[1].ids), 32)]
    assert isinstance(states[0], np.ndarray) and states[0].dtype == np.float32
    sentence = model.encode([texts[0], texts[2]])
    assert np.abs(np.stack([states[0].mean(0), states[2].mean(0)]) - sentence).max() < 1e-5
    spans = [(0, 9), (10, 25), (26, len(texts[0]))]
    chunks = model.encode_chunks([texts[0]], [spans], task=None, copies="pooled")[0]
    for (a, b), chunk in zip(spans_to_tokens(docs[0], spans), chunks):
        assert np.abs(states[0][a:b].mean(0) - chunk.embedding).max() < 1e-5
    single = model.encode(texts[2], output_value="token_embeddings", convert_to_tensor=True)
    assert torch.is_tensor(single) and torch.allclose(single, torch.from_numpy(states[2]), atol=1e-5)


def test_token_embeddings_refuse_what_they_cannot_be(make_model) -> None:
    with pytest.raises(ValueError, match="pools the last token"):
        make_model("prompteol").encode(["A text."], output_value="token_embeddings")
    with pytest.raises(ValueError, match="a prompt would add tokens"):
        make_model("echo").encode(["A text."], output_value="token_embeddings", prompt="Query: ")

