"""EchoEmbedding: equality with the core, batching, pickling into workers, async, a vector index."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import pickle
from pathlib import Path

import pytest
import torch
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.node_parser import SentenceSplitter

import echo_embeddings
from echo_embeddings import PRESETS
from helpers import assert_same_as_the_saved_model, loop_ticks_during, save_dense_model, save_lora_model, save_tiny_model
from llama_index.embeddings.echo import EchoEmbedding

_DATA = json.loads((Path(__file__).resolve().parents[3] / "tests" / "data" / "retrieval.json").read_text(encoding="utf-8"))
DOCUMENTS: list[str] = _DATA["documents"]
QUERIES: dict[str, int] = _DATA["queries"]
TEXTS = ["A man is playing a guitar.", "Line one\nline two", "", "Short."]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", arch="qwen2"))


@pytest.mark.parametrize("strategy", sorted(PRESETS))
def test_same_vectors_as_the_core(tiny_folder: str, strategy: str) -> None:
    embedding = EchoEmbedding(model_name=tiny_folder, strategy=strategy, device="cpu")
    core = echo_embeddings.load(tiny_folder, strategy, device="cpu")
    texts = torch.tensor(embedding.get_text_embedding_batch(TEXTS))
    assert (texts - core.encode_document(TEXTS, normalize_embeddings=True, convert_to_tensor=True)).abs().max() <= 1e-5
    query = torch.tensor(embedding.get_query_embedding(TEXTS[0]))
    assert (query - core.encode_query(TEXTS[:1], normalize_embeddings=True, convert_to_tensor=True)[0]).abs().max() <= 1e-5
    single = torch.tensor(embedding.get_text_embedding(TEXTS[1]))
    assert (single - texts[1]).abs().max() <= 1e-5


def test_token_prepending_in_one_argument(tiny_folder: str) -> None:
    embedding = EchoEmbedding(model_name=tiny_folder, strategy="metaeol+tp", device="cpu", model_kwargs={"tp_layers": [1, 2]})
    core = echo_embeddings.load(tiny_folder, "metaeol+tp", device="cpu", tp_layers=[1, 2])
    got = torch.tensor(embedding.get_text_embedding_batch(TEXTS))
    assert (got - core.encode_document(TEXTS, normalize_embeddings=True, convert_to_tensor=True)).abs().max() <= 1e-5


def test_batch_size_default_keeps_length_sorting(tiny_folder: str) -> None:
    assert EchoEmbedding().embed_batch_size >= 128
    small = EchoEmbedding(model_name=tiny_folder, device="cpu", embed_batch_size=2)
    large = EchoEmbedding(model_name=tiny_folder, device="cpu")
    assert torch.allclose(torch.tensor(small.get_text_embedding_batch(TEXTS * 3)), torch.tensor(large.get_text_embedding_batch(TEXTS * 3)), atol=1e-5)


def test_saved_instruction_is_not_overwritten(tiny_folder: str, tmp_path) -> None:
    model = echo_embeddings.load(tiny_folder, "echo", device="cpu", instruction="Find the matching product")
    model.save(str(tmp_path / "saved"))
    expected = model.encode_query(["red shoes"], normalize_embeddings=True, convert_to_tensor=True)[0]
    for instruction in (None, ""):
        embedding = EchoEmbedding(model_name=str(tmp_path / "saved"), device="cpu", query_instruction=instruction)
        assert (torch.tensor(embedding.get_query_embedding("red shoes")) - expected).abs().max() <= 1e-5
    custom = EchoEmbedding(model_name=str(tmp_path / "saved"), device="cpu", query_instruction="Something else")
    assert (torch.tensor(custom.get_query_embedding("red shoes")) - expected).abs().max() > 1e-4


def test_pickles_without_the_model_and_reloads(tiny_folder: str) -> None:
    embedding = EchoEmbedding(model_name=tiny_folder, strategy="echo", device="cpu")
    before = embedding.get_text_embedding("hello")
    data = pickle.dumps(embedding)
    assert len(data) < 10_000, "the model must not travel with the object"
    clone = pickle.loads(data)
    assert clone.get_text_embedding("hello") == pytest.approx(before, abs=1e-6)


def _worker(blob: bytes, queue) -> None:
    """What an IngestionPipeline worker does: unpickle the transformations and run them."""
    from llama_index.core.ingestion.pipeline import run_transformations

    nodes, transformations = pickle.loads(blob)
    queue.put([n.embedding for n in run_transformations(nodes, transformations)])


def test_transformations_pickle_into_a_spawned_worker(tiny_folder: str) -> None:
    # IngestionPipeline(num_workers=2).run hangs here even with only a SentenceSplitter
    # (run-llama/llama_index#10104), so this runs its worker's job in a spawned process directly.
    embedding = EchoEmbedding(model_name=tiny_folder, strategy="echo", device="cpu")
    nodes = SentenceSplitter(chunk_size=64, chunk_overlap=0).get_nodes_from_documents([Document(text=t) for t in DOCUMENTS])
    expected = embedding.get_text_embedding_batch([n.get_content(metadata_mode="embed") for n in nodes])
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    worker = context.Process(target=_worker, args=(pickle.dumps((nodes, [embedding])), queue))
    worker.start()
    got = queue.get(timeout=300)
    worker.join(60)
    assert worker.exitcode == 0
    assert torch.allclose(torch.tensor(got), torch.tensor(expected), atol=1e-5)


def test_async_does_not_block_the_loop(tiny_folder: str) -> None:
    embedding = EchoEmbedding(model_name=tiny_folder, strategy="echo", device="cpu")
    texts = [f"Sentence {i} about a different topic." for i in range(200)]
    expected = embedding.get_text_embedding_batch(texts)

    async def both() -> list:
        return await asyncio.gather(embedding.aget_text_embedding_batch(texts), embedding.aget_query_embedding(texts[0]))

    (batch, query), ticks = asyncio.run(loop_ticks_during(both()))
    assert torch.allclose(torch.tensor(batch), torch.tensor(expected), atol=1e-6)
    assert query == pytest.approx(embedding.get_query_embedding(texts[0]), abs=1e-6)
    assert ticks > 3


def test_vector_index_returns_the_relevant_node_first() -> None:
    embedding = EchoEmbedding(model_name="smollm2-135m", strategy="echo", device="cpu")
    previous = Settings._embed_model
    Settings.embed_model = embedding
    try:
        index = VectorStoreIndex.from_documents([Document(text=t) for t in DOCUMENTS])
        retriever = index.as_retriever(similarity_top_k=1)
        for query, position in QUERIES.items():
            assert retriever.retrieve(query)[0].node.get_content() == DOCUMENTS[position], query
    finally:
        Settings._embed_model = previous



def test_a_saved_model_runs_its_whole_module_list(tmp_path) -> None:
    """A Dense projection (32 -> 8) and Normalize after the echo module apply here exactly as in sentence-transformers."""
    folder = str(save_dense_model(tmp_path))
    adapter = EchoEmbedding(model_name=folder, device="cpu")
    assert_same_as_the_saved_model(folder, adapter.get_text_embedding_batch, adapter.get_query_embedding)


def test_a_saved_lora_adapter_loads_onto_its_base(tmp_path) -> None:
    """A fine-tuned model saved as an adapter alone gives the saved model's vectors here too."""
    folder = str(save_lora_model(tmp_path))
    adapter = EchoEmbedding(model_name=folder, device="cpu")
    assert_same_as_the_saved_model(folder, adapter.get_text_embedding_batch, adapter.get_query_embedding)


def test_truncation_and_precision_fields(tiny_folder: str) -> None:
    from sentence_transformers.util.quantization import quantize_embeddings

    texts = ["A man is playing a guitar.", "Dogs run in the park."]
    core = echo_embeddings.load(tiny_folder, "echo", device="cpu")
    with pytest.warns(UserWarning, match="cannot be cut to 8"):
        short = EchoEmbedding(model_name=tiny_folder, strategy="echo", device="cpu", truncate_dim=8).get_text_embedding_batch(texts)
    expected = core.encode_document(texts, truncate_dim=8, normalize_embeddings=True)
    assert max(abs(a - b) for row, want in zip(short, expected) for a, b in zip(row, want)) <= 1e-5
    binary = EchoEmbedding(model_name=tiny_folder, strategy="echo", device="cpu", precision="binary").get_text_embedding_batch(texts)
    assert binary == quantize_embeddings(core.encode_document(texts, normalize_embeddings=True), "binary").tolist()
    with pytest.raises(ValueError, match="needs ranges"):
        EchoEmbedding(model_name=tiny_folder, precision="uint8")
