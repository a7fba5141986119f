"""EchoLateChunkNodeParser: nodes with exact offsets whose late vectors survive an index, a pipeline and Qdrant."""

from __future__ import annotations

import numpy as np
import pytest
from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.ingestion import IngestionPipeline
from llama_index.vector_stores.qdrant import QdrantVectorStore
from qdrant_client import QdrantClient

import echo_embeddings
from helpers import save_tiny_model
from llama_index.embeddings.echo import EchoEmbedding, EchoLateChunkNodeParser

TEXTS = [
    "Berlin is the capital of Germany. Its population is about 3.7 million. The city has many parks and lakes.",
    "Echo embeddings repeat the text. Every token of the second copy has read all of it. Late chunking is sound.",
]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", arch="qwen2"))


@pytest.fixture
def parser(tiny_folder: str) -> EchoLateChunkNodeParser:
    return EchoLateChunkNodeParser(embed_model=EchoEmbedding(model_name=tiny_folder, device="cpu"), chunk_tokens=8)


def late_vectors(folder: str) -> dict[tuple[str, int], np.ndarray]:
    core = echo_embeddings.load(folder, device="cpu").encode_chunks(TEXTS, chunk_tokens=8, normalize_embeddings=True)
    return {(TEXTS[d], c.start): c.embedding for d, chunks in enumerate(core) for c in chunks}


def test_nodes_have_exact_offsets_and_the_core_vectors(parser, tiny_folder: str) -> None:
    documents = [Document(text=t, metadata={"title": f"t{i}"}) for i, t in enumerate(TEXTS)]
    nodes = parser.get_nodes_from_documents(documents)
    expected = late_vectors(tiny_folder)
    assert len(nodes) == len(expected)
    for node in nodes:
        document = next(d for d in documents if d.doc_id == node.ref_doc_id)
        assert document.text[node.start_char_idx : node.end_char_idx] == node.text
        assert np.abs(np.array(node.embedding) - expected[(document.text, node.start_char_idx)]).max() < 1e-6
        assert node.metadata["title"] in ("t0", "t1")
        assert "echo_chunking" not in node.get_content(metadata_mode="embed")
    assert documents[0].excluded_embed_metadata_keys == []  # the user's documents are untouched


@pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant")
def test_an_index_keeps_the_late_vectors(parser, tiny_folder: str) -> None:
    nodes = parser.get_nodes_from_documents([Document(text=t) for t in TEXTS])
    client = QdrantClient(location=":memory:")
    store = QdrantVectorStore(client=client, collection_name="late")
    embed_model = EchoEmbedding(model_name=tiny_folder, device="cpu")
    index = VectorStoreIndex(nodes, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=embed_model)
    points, _ = client.scroll("late", limit=100, with_vectors=True)
    by_id = {n.node_id: n.embedding for n in nodes}
    assert len(points) == len(nodes)
    for point in points:
        assert np.abs(np.array(point.vector) - np.array(by_id[str(point.id)])).max() < 1e-5
    found = index.as_retriever(similarity_top_k=2).retrieve("What is the capital of Germany?")
    assert len(found) == 2 and all(r.node.start_char_idx is not None for r in found)


def test_a_pipeline_with_an_embed_model_after_it_keeps_them_and_warns(parser, tiny_folder: str) -> None:
    expected = late_vectors(tiny_folder)
    pipeline = IngestionPipeline(transformations=[parser, EchoEmbedding(model_name=tiny_folder, device="cpu")])
    with pytest.warns(UserWarning, match="keep them"):
        nodes = pipeline.run(documents=[Document(text=t) for t in TEXTS])
    for node in nodes:
        text = next(t for t in TEXTS if t[node.start_char_idx : node.end_char_idx] == node.text)
        assert np.abs(np.array(node.embedding) - expected[(text, node.start_char_idx)]).max() < 1e-6


def test_the_parser_reaches_the_core_through_public_methods() -> None:
    import inspect

    from llama_index.embeddings.echo import EchoEmbedding, late_chunking

    assert "_encoder" not in inspect.getsource(late_chunking)
    assert callable(EchoEmbedding.late_chunks)
