"""The OpenAI-compatible server: in-process for every error path, and live on 127.0.0.1 for the real
clients (openai sync and async, LangChain's OpenAIEmbeddings, LlamaIndex's OpenAILikeEmbedding),
client disconnects and a SIGTERM drain. Every load here is bounded in count and time."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

import echo_embeddings
from echo_embeddings.server import ServerLimits, create_app
from helpers import save_tiny_model

TEXTS = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply today."]


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = echo_embeddings.load(str(save_tiny_model(tmp_path_factory.mktemp("tiny") / "base")), "echo", device="cpu")
    saved = tmp_path_factory.mktemp("served") / "model"
    model.save(str(saved))
    return saved


@pytest.fixture(scope="module")
def model(folder: Path):
    return echo_embeddings.load(str(folder), device="cpu")


@pytest.fixture
def client(model) -> Iterator[TestClient]:
    with TestClient(create_app(model, served_model_name="tiny-echo")) as client:
        yield client


def post(client: TestClient, body: object, **headers: str) -> httpx.Response:
    return client.post("/v1/embeddings", content=json.dumps(body), headers={"content-type": "application/json", **headers})


# -- in process ----------------------------------------------------------------------------------


def test_embeddings_follow_openais_shape_and_equal_encode(client: TestClient, model) -> None:
    response = post(client, {"input": TEXTS, "model": "tiny-echo"})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list" and body["model"] == "tiny-echo"
    assert [d["index"] for d in body["data"]] == [0, 1, 2] and all(d["object"] == "embedding" for d in body["data"])
    got = np.array([d["embedding"] for d in body["data"]])
    assert np.abs(got - unit(model.encode(TEXTS))).max() < 1e-5
    tokens = sum(len(ids) for ids in model[0].tokenizer(TEXTS, add_special_tokens=False)["input_ids"])
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    single = post(client, {"input": TEXTS[0]}).json()
    assert np.abs(np.array(single["data"][0]["embedding"]) - got[0]).max() < 1e-6


def test_base64_and_query_document_templates(client: TestClient, model) -> None:
    encoded = post(client, {"input": TEXTS, "encoding_format": "base64", "input_type": "query"}).json()
    vectors = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype=np.float32) for d in encoded["data"]])
    assert np.abs(vectors - unit(model.encode(TEXTS, task="query"))).max() < 1e-5
    by_suffix = post(client, {"input": TEXTS, "model": "tiny-echo:query"}).json()
    assert np.abs(np.array([d["embedding"] for d in by_suffix["data"]]) - vectors).max() < 1e-6
    documents = post(client, {"input": TEXTS, "input_type": "document"}).json()
    assert np.abs(np.array([d["embedding"] for d in documents["data"]]) - unit(model.encode(TEXTS, task="document"))).max() < 1e-5
    conflict = post(client, {"input": TEXTS, "model": "x:query", "input_type": "document"})
    assert conflict.status_code == 400 and conflict.json()["error"]["param"] == "input_type"


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"input": ["fine", 3]}, "input[1]", "input[1] is int"),
        ({"input": []}, "input", "empty list"),
        ({"input": ["ok"], "temperature": 1}, "temperature", "unknown field"),
        ({"input": [101, 102]}, "input", "token-id arrays are not supported"),
        ({"input": [[101], [102]]}, "input", "token-id arrays are not supported"),
        ({"input": ["a", ""]}, "input[1]", "empty string"),
        ({"input": ["x" * 50]}, "input[0]", "50 characters; at most 40"),
        ({"input": ["a"] * 9}, "input", "9 items; at most 8"),
        ({"input": ["a"], "encoding_format": "int8"}, "encoding_format", "invalid field"),
        ({"input": ["a"], "dimensions": 16}, "dimensions", "cannot be cut to 16 without losing quality"),
        ({"model": "tiny-echo"}, "input", "'input' is required"),
    ],
)
def test_bad_requests_get_a_400_that_names_the_item(model, body: dict, param: str, message: str) -> None:
    with TestClient(create_app(model, limits=ServerLimits(max_inputs=8, max_input_chars=40))) as client:
        response = post(client, body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param and message in error["message"]
        assert "Traceback" not in response.text
        assert post(client, {"input": ["still serving"]}).status_code == 200


def test_not_json_and_a_body_too_large(model) -> None:
    with TestClient(create_app(model, limits=ServerLimits(max_body_bytes=200))) as client:
        response = client.post("/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"})
        assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
        big = post(client, {"input": ["x" * 300]})
        assert big.status_code == 413 and "at most 200" in big.json()["error"]["message"]


def test_dimensions_on_a_pca_whitened_model(model) -> None:
    texts = [f"text number {i} about {w}" for i, w in enumerate(["cats", "dogs", "stocks", "rain", "music"] * 8)]
    base = echo_embeddings.EchoSentenceTransformer(modules=[model[0]], device="cpu")
    echo_embeddings.fit_whitening(base, texts, dim=16)
    with TestClient(create_app(base)) as client:
        full = np.array([d["embedding"] for d in post(client, {"input": TEXTS}).json()["data"]])
        cut = np.array([d["embedding"] for d in post(client, {"input": TEXTS, "dimensions": 8}).json()["data"]])
        assert full.shape == (3, 16) and cut.shape == (3, 8)
        assert np.abs(cut - unit(full[:, :8])).max() < 1e-5
        assert post(client, {"input": TEXTS, "dimensions": 32}).status_code == 400


def test_api_key_models_health_and_metrics(model) -> None:
    with TestClient(create_app(model, served_model_name="tiny-echo", api_key="s3cret")) as client:
        assert client.get("/health").json() == {"status": "ready"}
        refused = post(client, {"input": ["a"]})
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
        assert post(client, {"input": ["a"]}, authorization="Bearer wrong").status_code == 401
        auth = {"authorization": "Bearer s3cret"}
        assert post(client, {"input": ["a", "b"]}, **auth).status_code == 200
        assert client.get("/v1/models", headers=auth).json()["data"][0]["id"] == "tiny-echo"
        metrics = client.get("/metrics", headers=auth).text
        assert 'echo_embeddings_requests_total{status="200"} 1' in metrics
        assert "echo_embeddings_texts_total 2" in metrics and "echo_embeddings_queue_texts 0" in metrics
        assert 'echo_embeddings_request_seconds_bucket{le="+Inf"} 1' in metrics and "echo_embeddings_run_texts_count" in metrics
        assert re.search(r"^echo_embeddings_run_seconds_count [1-9]", metrics, re.M)
        assert re.search(r"^echo_embeddings_run_token_budget [1-9][0-9]*$", metrics, re.M)


def test_an_unexpected_error_is_a_500_without_a_stack_trace(model, monkeypatch: pytest.MonkeyPatch) -> None:
    real = type(model).encode

    def failing(self, texts, *args, **kwargs):
        if texts == ["explode"]:
            raise RuntimeError("secret internal detail")
        return real(self, texts, *args, **kwargs)

    monkeypatch.setattr(type(model), "encode", failing)
    with TestClient(create_app(model), raise_server_exceptions=False) as client:
        response = post(client, {"input": ["explode"]})
        assert response.status_code == 500 and response.json()["error"]["type"] == "server_error"
        assert "secret" not in response.text and "Traceback" not in response.text
        assert post(client, {"input": ["still serving"]}).status_code == 200
        assert client.get("/nowhere").status_code == 404


def test_a_full_queue_answers_429_with_retry_after(model, monkeypatch: pytest.MonkeyPatch) -> None:
    gate, entered = threading.Event(), threading.Event()
    real = type(model).encode

    def held(self, texts, *args, **kwargs):
        if texts == ["hold"]:
            entered.set()
            gate.wait(30)
        return real(self, texts, *args, **kwargs)

    with TestClient(create_app(model, limits=ServerLimits(max_queued_texts=4))) as client:
        monkeypatch.setattr(type(model), "encode", held)
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(post, client, {"input": ["hold"]})
            assert entered.wait(10)
            second = pool.submit(post, client, {"input": ["a", "b", "c", "d"]})
            deadline = time.monotonic() + 10
            while "echo_embeddings_queue_texts 4" not in client.get("/metrics").text and time.monotonic() < deadline:
                time.sleep(0.05)
            refused = post(client, {"input": ["e"]})
            gate.set()
            assert first.result(30).status_code == 200 and second.result(30).status_code == 200
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "queue_full"


# -- live, on 127.0.0.1 ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, folder: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "echo_embeddings.cli", "serve", str(folder), "--port", str(self.port), "--log-level", "warning", *args]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.process.stdout.read()}")
            time.sleep(0.2)
        self.stop()
        raise TimeoutError("the server did not become ready in 120 s")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


@pytest.fixture(scope="module")
def live(folder: Path) -> Iterator[LiveServer]:
    server = LiveServer(folder, "--served-model-name", "tiny-echo", "--api-key", "k3y")
    yield server
    server.stop()


def test_the_openai_client_sync_and_async(live: LiveServer, model) -> None:
    import openai

    expected = unit(model.encode(TEXTS))
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="k3y", max_retries=0)
    result = client.embeddings.create(model="tiny-echo", input=TEXTS, encoding_format="float")
    assert np.abs(np.array([d.embedding for d in result.data]) - expected).max() < 1e-5
    raw = client.embeddings.create(model="tiny-echo", input=TEXTS, encoding_format="base64")  # asked for, so left encoded
    decoded = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype=np.float32) for d in raw.data])
    assert np.abs(decoded - expected).max() < 1e-5
    default = client.embeddings.create(model="tiny-echo", input=TEXTS)  # the client asks for base64 itself
    assert np.abs(np.array([d.embedding for d in default.data]) - expected).max() < 1e-5
    assert client.models.list().data[0].id == "tiny-echo"
    with pytest.raises(openai.BadRequestError, match="input\\[1\\]"):
        client.embeddings.create(model="tiny-echo", input=["a", ""])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{live.url}/v1", api_key="wrong", max_retries=0).embeddings.create(model="tiny-echo", input=["a"])

    async def many() -> list:
        async_client = openai.AsyncOpenAI(base_url=f"{live.url}/v1", api_key="k3y", max_retries=0)
        return await asyncio.gather(*(async_client.embeddings.create(model="tiny-echo", input=[t]) for t in TEXTS * 4))

    for i, result in enumerate(asyncio.run(many())):
        assert np.abs(np.array(result.data[0].embedding) - expected[i % 3]).max() < 1e-5


def test_langchain_and_llamaindex_openai_clients(live: LiveServer, model) -> None:
    from langchain_openai import OpenAIEmbeddings
    from llama_index.embeddings.openai_like import OpenAILikeEmbedding

    documents, query = unit(model.encode(TEXTS, task="document")), unit(model.encode(["what plays music?"], task="query"))[0]
    plain = unit(model.encode(TEXTS))
    # LangChain sends token ids unless told not to (check_embedding_ctx_length=False sends the text).
    langchain = OpenAIEmbeddings(model="tiny-echo", base_url=f"{live.url}/v1", api_key="k3y", check_embedding_ctx_length=False)
    assert np.abs(np.array(langchain.embed_documents(TEXTS)) - plain).max() < 1e-5
    langchain_documents = OpenAIEmbeddings(model="tiny-echo:document", base_url=f"{live.url}/v1", api_key="k3y", check_embedding_ctx_length=False)
    assert np.abs(np.array(langchain_documents.embed_documents(TEXTS)) - documents).max() < 1e-5
    llama = OpenAILikeEmbedding(model_name="tiny-echo:query", api_base=f"{live.url}/v1", api_key="k3y")
    assert np.abs(np.array(llama.get_query_embedding("what plays music?")) - query).max() < 1e-5


def cancelled(live: LiveServer) -> int:
    metrics = httpx.get(f"{live.url}/metrics", headers={"authorization": "Bearer k3y"}).text
    return int(float(re.search(r"^echo_embeddings_scheduler_cancelled_total (\S+)$", metrics, re.M).group(1)))


def test_a_client_that_disconnects_breaks_nothing(live: LiveServer, model) -> None:
    headers = {"authorization": "Bearer k3y"}
    many = {"input": [f"a long-ish text number {i} " * 20 for i in range(400)]}
    before = cancelled(live)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(httpx.post, f"{live.url}/v1/embeddings", json=many, headers=headers, timeout=120)
        time.sleep(0.3)  # the worker is inside that request's run
        with pytest.raises(httpx.TimeoutException):  # this one waits in the queue, and its client goes away
            httpx.post(f"{live.url}/v1/embeddings", json={"input": ["never embedded"]}, headers=headers, timeout=0.3)
        assert running.result(120).status_code == 200
    assert cancelled(live) == before + 1  # dropped before it ran
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda t: httpx.post(f"{live.url}/v1/embeddings", json={"input": [t]}, headers=headers, timeout=120), TEXTS))
    expected = unit(model.encode(TEXTS))
    for i, response in enumerate(results):
        assert response.status_code == 200
        assert np.abs(np.array(response.json()["data"][0]["embedding"]) - expected[i]).max() < 1e-5


def test_sigterm_finishes_the_requests_in_flight_and_exits_0(folder: Path) -> None:
    server = LiveServer(folder)
    body = {"input": [f"text {i} " * 30 for i in range(300)]}
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(httpx.post, f"{server.url}/v1/embeddings", json=body, timeout=120)
        time.sleep(0.5)  # the request is being embedded
        server.process.send_signal(signal.SIGTERM)
        response = in_flight.result(120)
    assert response.status_code == 200 and len(response.json()["data"]) == 300
    assert server.process.wait(60) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{server.url}/v1/embeddings", json={"input": ["late"]}, timeout=5)


def test_a_port_in_use_fails_at_start_instead_of_hanging(folder: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, "-m", "echo_embeddings.cli", "serve", str(folder), "--port", str(port), "--log-level", "error"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode != 0
    assert "address already in use" in (result.stdout + result.stderr).lower()


def test_a_matryoshka_trained_model_serves_its_trained_sizes_only(folder: Path, tmp_path: Path) -> None:
    from echo_embeddings import training

    rows = [(TEXTS[i % 3], TEXTS[(i + 1) % 3] + f" {i}", float(i % 5)) for i in range(16)]
    model = echo_embeddings.load(str(folder), device="cpu")
    with pytest.raises(ValueError, match="between 1 and the model's 32"):
        training.train(model, training.TrainingData("scored", rows, "memory"), tmp_path / "bad", max_steps=1, matryoshka_dims=[64])
    training.train(
        model, training.TrainingData("scored", rows, "memory"), tmp_path / "mrl", max_steps=2, batch_size=8,
        matryoshka_dims=[8, 16], show_progress_bar=False,
    )
    trained = echo_embeddings.load(str(tmp_path / "mrl"), device="cpu")
    assert trained[0].matryoshka_dims == (8, 16, 32)
    with TestClient(create_app(trained)) as client:
        full = np.array([d["embedding"] for d in post(client, {"input": TEXTS}).json()["data"]])
        cut = np.array([d["embedding"] for d in post(client, {"input": TEXTS, "dimensions": 8}).json()["data"]])
        assert np.abs(cut - unit(full[:, :8])).max() < 1e-5
        refused = post(client, {"input": TEXTS, "dimensions": 12})
        assert refused.status_code == 400 and "trained to work at [8, 16, 32] only" in refused.json()["error"]["message"]
