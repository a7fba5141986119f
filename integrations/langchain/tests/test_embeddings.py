"""EchoEmbeddings: LangChain's standard tests, equality with the core, laziness, async, a retriever."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

import echo_embeddings
from echo_embeddings import PRESETS, adapter_cache as shared
from helpers import assert_same_as_the_saved_model, loop_ticks_during, save_dense_model, save_lora_model, save_tiny_model
from langchain_echo_embeddings import EchoEmbeddings

_DATA = json.loads((Path(__file__).resolve().parents[3] / "tests" / "data" / "retrieval.json").read_text(encoding="utf-8"))
DOCUMENTS: list[str] = _DATA["documents"]
QUERIES: dict[str, int] = _DATA["queries"]


class TestEchoEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[EchoEmbeddings]:
        return EchoEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": "smollm2-135m", "strategy": "echo"}

    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        return {"ECHO_EMBEDDINGS_MODEL": "gemma3-270m"}, {"strategy": "echo"}, {"model": "gemma3-270m"}


class TestEchoEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[EchoEmbeddings]:
        return EchoEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": "smollm2-135m", "strategy": "echo", "device": "cpu"}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.mark.parametrize("strategy", sorted(PRESETS))
def test_same_vectors_as_the_core(tiny_folder: str, strategy: str) -> None:
    texts = ["A man is playing a guitar.", "Line one\nline two", ""]
    embeddings = EchoEmbeddings(model=tiny_folder, strategy=strategy, device="cpu")
    core = echo_embeddings.load(tiny_folder, strategy, device="cpu")
    documents = torch.tensor(embeddings.embed_documents(texts))
    assert (documents - core.encode_document(texts, normalize_embeddings=True, convert_to_tensor=True)).abs().max() <= 1e-5
    query = torch.tensor(embeddings.embed_query(texts[0]))
    assert (query - core.encode_query(texts[:1], normalize_embeddings=True, convert_to_tensor=True)[0]).abs().max() <= 1e-5


def test_token_prepending_and_core_options_in_one_argument(tiny_folder: str) -> None:
    embeddings = EchoEmbeddings(model=tiny_folder, strategy="prompteol+tp", device="cpu", model_kwargs={"tp_layers": [1, 3], "output_layer": 3})
    core = echo_embeddings.load(tiny_folder, "prompteol+tp", device="cpu", tp_layers=[1, 3], output_layer=3)
    got = torch.tensor(embeddings.embed_documents(["Dogs run in the park."]))
    assert (got - core.encode_document(["Dogs run in the park."], normalize_embeddings=True, convert_to_tensor=True)).abs().max() <= 1e-5


def test_lazy_and_shared_loading(tiny_folder: str) -> None:
    before = len(shared._CACHE)
    unique = {"max_seq_length": 77}  # a configuration no other test loads
    a = EchoEmbeddings(model=tiny_folder, strategy="mean", device="cpu", model_kwargs=unique)
    b = EchoEmbeddings(model=tiny_folder, strategy="mean", device="cpu", batch_size=4, model_kwargs=unique)
    assert len(shared._CACHE) == before, "constructing must not load the model"
    a.embed_query("x")
    assert a._encoder() is b._encoder() and len(shared._CACHE) == before + 1
    assert a._encoder() is not EchoEmbeddings(model=tiny_folder, strategy="echo", device="cpu")._encoder()


def test_text_is_not_altered(tiny_folder: str) -> None:
    embeddings = EchoEmbeddings(model=tiny_folder, device="cpu")
    newline, space = embeddings.embed_documents(["one\ntwo", "one two"])
    assert newline != space
    assert embeddings.embed_documents([]) == []


def test_async_does_not_block_the_loop_and_is_safe(tiny_folder: str) -> None:
    embeddings = EchoEmbeddings(model=tiny_folder, strategy="echo", device="cpu")
    texts = [f"Sentence number {i} about something else entirely." for i in range(200)]
    expected = embeddings.embed_documents(texts)
    queries = [embeddings.embed_query(t) for t in texts[:5]]

    async def concurrent() -> tuple[list, tuple]:
        documents = asyncio.gather(embeddings.aembed_documents(texts), embeddings.aembed_documents(texts))
        return await documents, await asyncio.gather(*(embeddings.aembed_query(t) for t in texts[:5]))

    (results, query_results), ticks = asyncio.run(loop_ticks_during(concurrent()))
    assert all(torch.allclose(torch.tensor(r), torch.tensor(expected), atol=1e-6) for r in results)
    assert all(torch.allclose(torch.tensor(q), torch.tensor(e), atol=1e-6) for q, e in zip(query_results, queries))
    assert ticks > 3, f"the event loop ran only {ticks} times while embedding"


def test_retriever_returns_the_relevant_document_first() -> None:
    embeddings = EchoEmbeddings(model="smollm2-135m", strategy="echo", device="cpu")
    retriever = InMemoryVectorStore.from_texts(DOCUMENTS, embeddings).as_retriever(search_kwargs={"k": 1})
    for query, index in QUERIES.items():
        assert retriever.invoke(query)[0].page_content == DOCUMENTS[index], query



def test_a_saved_model_runs_its_whole_module_list(tmp_path) -> None:
    """A Dense projection (32 -> 8) and Normalize after the echo module apply here exactly as in sentence-transformers."""
    folder = str(save_dense_model(tmp_path))
    adapter = EchoEmbeddings(model=folder, device="cpu")
    assert_same_as_the_saved_model(folder, adapter.embed_documents, adapter.embed_query)


def test_a_saved_lora_adapter_loads_onto_its_base(tmp_path) -> None:
    """A fine-tuned model saved as an adapter alone gives the saved model's vectors here too."""
    folder = str(save_lora_model(tmp_path))
    adapter = EchoEmbeddings(model=folder, device="cpu")
    assert_same_as_the_saved_model(folder, adapter.embed_documents, adapter.embed_query)


def test_truncation_and_precision_match_sentence_transformers(tiny_folder: str) -> None:
    from sentence_transformers.util.quantization import quantize_embeddings

    texts = ["A man is playing a guitar.", "Dogs run in the park.", "Stocks fell sharply."]
    core = echo_embeddings.load(tiny_folder, "echo", device="cpu")
    full = core.encode_document(texts, truncate_dim=8, normalize_embeddings=True)
    with pytest.warns(UserWarning, match="truncate_dim=8: this model's 32 dimensions cannot be cut to 8"):
        short = EchoEmbeddings(model=tiny_folder, strategy="echo", device="cpu", truncate_dim=8).embed_documents(texts)
    assert abs(torch.tensor(short) - torch.from_numpy(full)).max() <= 1e-5
    packed = EchoEmbeddings(model=tiny_folder, strategy="echo", device="cpu", precision="ubinary").embed_documents(texts)
    assert packed == quantize_embeddings(core.encode_document(texts, normalize_embeddings=True), "ubinary").tolist()
    ranges = echo_embeddings.calibration_ranges(core.encode_document(texts, normalize_embeddings=True))
    int8 = EchoEmbeddings(model=tiny_folder, strategy="echo", device="cpu", precision="int8", precision_ranges=ranges)
    assert asyncio.run(int8.aembed_documents(texts)) == int8.embed_documents(texts)
    assert all(-128 <= v <= 127 and float(v).is_integer() for row in int8.embed_documents(texts) for v in row)
    with pytest.raises(ValueError, match="int8' needs ranges"):
        EchoEmbeddings(model=tiny_folder, precision="int8")  # refused when made, before any weights load
