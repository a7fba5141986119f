"""EchoLateChunker: chunk Documents with offsets, late vectors that reach a real vector store unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_qdrant import QdrantVectorStore

import echo_embeddings
from helpers import save_tiny_model
from langchain_echo_embeddings import EchoEmbeddings, EchoLateChunker

TEXTS = [
    "Berlin is the capital of Germany. Its population is about 3.7 million. The city has many parks and lakes.",
    "Echo embeddings repeat the text. Every token of the second copy has read all of it. That makes late chunking sound.",
]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def chunker_for(folder: str, **options) -> EchoLateChunker:
    return EchoLateChunker(embeddings=EchoEmbeddings(model=folder, device="cpu"), chunk_tokens=8, **options)


def test_chunks_carry_offsets_and_the_core_vectors(tiny_folder: str) -> None:
    chunker = chunker_for(tiny_folder)
    documents = [Document(page_content=t, metadata={"source": f"doc{i}"}, id=f"d{i}") for i, t in enumerate(TEXTS)]
    pairs = chunker.split_and_embed(documents)
    core = echo_embeddings.load(tiny_folder, device="cpu").encode_chunks(TEXTS, chunk_tokens=8, normalize_embeddings=True)
    assert len(pairs) == sum(len(c) for c in core)
    flat = [c for chunks in core for c in chunks]
    for (chunk, vector), expected in zip(pairs, flat):
        text = TEXTS[int(chunk.metadata["source"][-1])]
        assert text[chunk.metadata["start_index"] : chunk.metadata["end_index"]] == chunk.page_content == expected.text
        assert np.abs(np.array(vector) - expected.embedding).max() < 1e-6
    assert pairs[0][0].id == "d0-0" and pairs[0][0].metadata["chunk_index"] == 0
    assert chunker.pending == 0  # split_and_embed keeps nothing


def test_a_qdrant_store_gets_the_late_vectors_without_re_embedding(tiny_folder: str) -> None:
    chunker = chunker_for(tiny_folder)
    chunks = chunker.split_documents([Document(page_content=t) for t in TEXTS])
    assert chunker.pending == len(chunks)
    expected = {(c.page_content, c.metadata["start_index"]): v for c, v in chunker.split_and_embed([Document(page_content=t) for t in TEXTS])}
    store = QdrantVectorStore.from_documents(chunks, chunker, location=":memory:", collection_name="late")
    assert chunker.pending == 0
    points, _ = store.client.scroll("late", limit=100, with_vectors=True)
    assert len(points) == len(chunks)
    for point in points:
        key = (point.payload["page_content"], point.payload["metadata"]["start_index"])
        assert np.abs(np.array(point.vector) - np.array(expected[key])).max() < 1e-5
    # Queries go through the query template; a plain EchoEmbeddings gives the same query vector.
    found = store.similarity_search_with_score("What is the capital of Germany?", k=3)
    assert len(found) == 3 and all("start_index" in doc.metadata for doc, _ in found)
    plain = EchoEmbeddings(model=tiny_folder, device="cpu")
    assert chunker.embed_query("a question") == plain.embed_query("a question")
    # The same collection opened later with a plain EchoEmbeddings answers the same way.
    reopened = QdrantVectorStore(client=store.client, collection_name="late", embedding=plain)
    again = reopened.similarity_search_with_score("What is the capital of Germany?", k=3)
    assert [d.page_content for d, _ in again] == [d.page_content for d, _ in found]
    # Text that was never split here is embedded whole, as a document.
    assert chunker.embed_documents(["Some other text."]) == plain.embed_documents(["Some other text."])


def test_equal_chunk_texts_keep_their_own_vectors_in_order(tiny_folder: str) -> None:
    chunker = chunker_for(tiny_folder)
    documents = [Document(page_content="Same start. " + tail) for tail in ("Cats sleep all day.", "Stocks fell sharply.")]
    chunks = chunker.split_documents(documents)
    firsts = [c for c in chunks if c.metadata["chunk_index"] == 0]
    assert firsts[0].page_content == firsts[1].page_content
    served = chunker.embed_documents([c.page_content for c in chunks])
    pairs = chunker.split_and_embed(documents)
    assert served == [v for _, v in pairs]  # each chunk got its own document's vector
    assert served[0] != served[len(chunks) // 2]


class _Splitter:
    def __init__(self, pieces) -> None:
        self.pieces = pieces

    def split_text(self, text: str) -> list[str]:
        return self.pieces


def test_a_text_splitter_chooses_the_chunks(tiny_folder: str) -> None:
    text = TEXTS[0]
    chunker = chunker_for(tiny_folder, text_splitter=_Splitter(["Berlin is the capital of Germany.", "The city has many parks and lakes."]))
    (first, _), (second, _) = chunker.split_and_embed([Document(page_content=text)])
    assert (first.metadata["start_index"], second.metadata["start_index"]) == (0, text.index("The city"))
    overlapping = chunker_for(tiny_folder, text_splitter=_Splitter(["Berlin is the capital", "capital of Germany."]))
    with pytest.raises(ValueError, match="set chunk_overlap=0"):
        overlapping.split_documents([Document(page_content=text)])
    with pytest.raises(ValueError, match="Document 0 is empty"):
        chunker_for(tiny_folder).split_documents([Document(page_content="")])


def test_pending_vectors_are_bounded_and_dropping_them_warns(tiny_folder: str) -> None:
    chunker = chunker_for(tiny_folder, max_pending=3)
    documents = [Document(page_content=t) for t in TEXTS]
    with pytest.warns(UserWarning, match=r"max_pending=3 .* dropped the \d+ oldest"):
        chunks = chunker.split_documents(documents)
    assert len(chunks) > 3 and chunker.pending == 3
    late = [vector for _, vector in chunker.split_and_embed(documents)]
    plain = chunker.embeddings.embed_documents([c.page_content for c in chunks[:-3]])
    vectors = chunker.embed_documents([c.page_content for c in chunks])
    assert np.abs(np.array(vectors[-3:]) - np.array(late[-3:])).max() < 1e-5  # the newest three were kept
    assert np.abs(np.array(vectors[:-3]) - np.array(plain)).max() < 1e-5  # the dropped ones are embedded on their own
    assert chunker.pending == 0
    chunker.split_documents(documents[:1])
    chunker.clear_pending()
    assert chunker.pending == 0


def test_the_chunkers_reach_the_core_through_public_methods() -> None:
    import inspect

    from langchain_echo_embeddings import late_chunking

    assert "_encoder" not in inspect.getsource(late_chunking)
    assert callable(EchoEmbeddings.late_chunks)
