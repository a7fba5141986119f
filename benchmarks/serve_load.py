"""Load on the OpenAI-compatible server: throughput and latency with 1 to 128 concurrent clients,
beside the offline ``model.encode`` of the same texts (the ceiling) and the lock-per-call path the
adapters used before the scheduler.

    python benchmarks/serve_load.py --data path/to/stsb_dev.tsv --out benchmarks/results/serve_load.json

Every client sends requests of 1-16 sentences (seeded), alternately with the query and the document
template, asks for base64 vectors (what the ``openai`` client asks for by default) and checks every
answer against the offline vectors of the same texts (count, order, values to 1e-4). One more
client sends one-sentence queries throughout, each after a random pause of 0.05-0.5 s (so that
queries arrive at any point of the server's runs, not only right after the last one ended), for the
latency a RAG query sees under that load. The server runs in its own process on 127.0.0.1, started
and stopped here; every level is bounded in requests and time.

With ``--infinity-python`` (a Python that has ``infinity-emb[torch,server]``, in a virtual
environment of its own), the loaded levels are run again against Infinity serving the same base
model with plain mean pooling, beside Infinity's own offline encode (``infinity_offline.py``): the
anchor for how much of its offline throughput a batching server keeps.

For the echo server, each level also splits the server's time from its ``/metrics`` counters: how
busy the model was, the texts of a run and the texts/s inside runs, and a request's mean time
outside the scheduler (HTTP, parsing, encoding the answer).

Each level is run once per ``--run-tokens`` budget (the scheduler's run budget, the trade between
throughput and query latency: ``0.5s`` is the default budget that adapts so that a run takes half a
second, ``256`` a fixed 256 tokens a run); the later budgets only at 32 clients and more. The
offline ceiling is measured again right before and right after each level (their mean is the
ceiling), so that a machine whose speed drifts (a shared 2-core VM) still gives honest ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

import echo_embeddings
from echo_embeddings.data import read_table

ROOT = Path(__file__).resolve().parent.parent


def sentences(path: Path, count: int) -> list[str]:
    rows = read_table(path, ["sentence1", "sentence2"])
    out = list(dict.fromkeys(t for row in rows for t in row))
    return out[:count]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def vectors_of(data: list[dict]) -> np.ndarray:
    """The answer's vectors, base64 (float32 bytes) or float lists."""
    if data and isinstance(data[0]["embedding"], str):
        return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype=np.float32) for d in data])
    return np.array([d["embedding"] for d in data], dtype=np.float32)


async def load_level(
    url: str, texts: list[str], expected: dict[str, np.ndarray], clients: int, requests_per_client: int, seconds: float, seed: int,
    *, with_task: bool = True, model: str = "echo", tolerance: float = 1e-4,
) -> dict:
    """``clients`` concurrent clients plus one query probe; every answer is checked against
    ``expected[task]`` (unit-length rows, in the order of ``texts``). ``with_task``: send
    ``input_type`` (the query and document templates); without it every request is ``"document"``
    in ``expected``."""
    errors: list[str] = []
    latencies: list[float] = []
    probe_latencies: list[float] = []
    sent_texts = 0
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:

        async def check(batch: list[str], task: str, response: httpx.Response) -> None:
            if response.status_code != 200:
                errors.append(f"{response.status_code}: {response.text[:200]}")
                return
            data = response.json()["data"]
            if [d["index"] for d in data] != list(range(len(batch))):
                errors.append("lost or reordered vectors")
                return
            got = vectors_of(data)
            got /= np.linalg.norm(got, axis=1, keepdims=True)
            want = np.stack([expected[task][texts.index(t)] for t in batch])
            if np.abs(got - want).max() > tolerance:
                errors.append(f"vectors differ by {np.abs(got - want).max():.2e}")

        def body(batch: list[str], task: str) -> dict:
            return {"input": batch, "model": model, "encoding_format": "base64", **({"input_type": task} if with_task else {})}

        async def client(number: int) -> None:
            nonlocal sent_texts
            rng = random.Random(seed * 1000 + number)
            for i in range(requests_per_client):
                if stop.is_set():
                    return
                batch = rng.sample(texts, rng.randint(1, 16))
                task = "query" if (number + i) % 2 and with_task else "document"
                started = time.perf_counter()
                response = await http.post("/v1/embeddings", json=body(batch, task))
                latencies.append(time.perf_counter() - started)
                sent_texts += len(batch)
                await check(batch, task, response)

        async def probe() -> None:
            rng = random.Random(seed)
            task = "query" if with_task else "document"
            while not stop.is_set():
                await asyncio.sleep(rng.uniform(0.05, 0.5))
                text = rng.choice(texts)
                started = time.perf_counter()
                response = await http.post("/v1/embeddings", json=body([text], task))
                probe_latencies.append(time.perf_counter() - started)
                await check([text], task, response)

        counters_before = await server_counters(http)
        probe_task = asyncio.create_task(probe())
        started = time.perf_counter()
        cpu_started = time.process_time()
        try:
            await asyncio.wait_for(asyncio.gather(*(client(n) for n in range(clients))), timeout=seconds)
        except asyncio.TimeoutError:
            stop.set()
        elapsed = time.perf_counter() - started
        generator_cpu = time.process_time() - cpu_started
        stop.set()
        await probe_task
        counters = {name: value - (0 if name in GAUGES else counters_before[name]) for name, value in (await server_counters(http)).items()}
    return {
        **split_of_the_time(counters, elapsed),
        "clients": clients, "seconds": round(elapsed, 2), "requests": len(latencies), "texts": sent_texts,
        "generator_cores": round(generator_cpu / elapsed, 2),
        "texts_per_s": round(sent_texts / elapsed, 2), "errors": len(errors), "first_errors": errors[:3],
        "request_p50_s": round(percentile(latencies, 50), 3), "request_p99_s": round(percentile(latencies, 99), 3),
        "query_p50_s": round(percentile(probe_latencies, 50), 3), "query_p95_s": round(percentile(probe_latencies, 95), 3),
        "query_p99_s": round(percentile(probe_latencies, 99), 3), "query_probes": len(probe_latencies),
    }


GAUGES = ("run_token_budget",)
COUNTERS = ("run_seconds_sum", "run_seconds_count", "run_texts_sum", "request_seconds_sum", "request_seconds_count", "scheduler_wait_seconds_sum")


async def server_counters(http: httpx.AsyncClient) -> dict[str, float]:
    """The echo server's own counters and gauges (``/metrics``); empty for a server without them (Infinity)."""
    response = await http.get("/metrics")
    found = {}
    for line in response.text.splitlines() if response.status_code == 200 else []:
        name, _, value = line.partition(" ")
        if name.removeprefix("echo_embeddings_") in COUNTERS + GAUGES:
            found[name.removeprefix("echo_embeddings_")] = float(value)
    return found if len(found) == len(COUNTERS + GAUGES) else {}


def split_of_the_time(counters: dict[str, float], elapsed: float) -> dict:
    """Where the server's time went during a level: how busy the model was, its texts/s inside
    runs, and a request's mean time outside the scheduler (HTTP, parsing, encoding the answer)."""
    if not counters or not counters["run_seconds_sum"] or not counters["request_seconds_count"]:
        return {}
    return {
        "model_busy": round(counters["run_seconds_sum"] / elapsed, 3),
        "texts_per_run": round(counters["run_texts_sum"] / counters["run_seconds_count"], 1),
        "in_run_texts_per_s": round(counters["run_texts_sum"] / counters["run_seconds_sum"], 2),
        "http_ms_per_request": round(1000 * (counters["request_seconds_sum"] - counters["scheduler_wait_seconds_sum"]) / counters["request_seconds_count"], 1),
        "token_budget_at_end": int(counters["run_token_budget"]),
    }


def lock_per_call(model, texts: list[str], clients: int, requests_per_client: int, seed: int) -> float:
    """Texts/s of the adapters' former path: each call takes a lock and runs its own small encode."""
    lock = threading.Lock()
    done = [0]

    def client(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        for i in range(requests_per_client):
            batch = rng.sample(texts, rng.randint(1, 16))
            with lock:
                model.encode(batch, task="query" if (number + i) % 2 else "document")
                done[0] += len(batch)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return done[0] / (time.perf_counter() - started)


def as_table(report: dict, args: argparse.Namespace) -> dict:
    """The report in the shape ``benchmarks/render_results.py`` turns into the docs' table and chart."""

    def cell(value: float | None, decimals: int) -> dict | None:
        return None if value is None else {"value": value, "decimals": decimals}

    columns = ["texts/s", "offline texts/s", "vs offline encode", "lock per call vs offline", "query p50 s", "query p95 s", "query p99 s", "errors",
               "model busy", "texts a run", "texts/s in runs", "HTTP ms a request", "token budget at the end"]
    rows = []
    for level in report["levels"] + report.get("infinity", []):
        rows.append({
            "label": f"Infinity {report['infinity_version']}, mean pooling, {level['clients']} clients" if "infinity" in level
            else f"{level['clients']} client{'s' * (level['clients'] != 1)}, {budget_name(level['run_tokens'])}",
            "cells": [
                cell(level["texts_per_s"], 1), cell(level["offline_texts_per_s"], 1), cell(level["vs_offline"], 2), cell(level.get("lock_vs_offline"), 2),
                cell(level["query_p50_s"], 2), cell(level["query_p95_s"], 2), cell(level["query_p99_s"], 2), cell(level["errors"], 0),
                cell(level.get("model_busy"), 3), cell(level.get("texts_per_run"), 1), cell(level.get("in_run_texts_per_s"), 1), cell(level.get("http_ms_per_request"), 0),
                cell(level.get("token_budget_at_end"), 0),
            ],
        })
    return {
        "title": f"Serving {report['model']} on this 2-core CPU: throughput and one-sentence query latency under load",
        "unit": f"server peak RSS {report['server_peak_rss_mib']:.0f} MiB; exit code after SIGTERM {report['server_exit_codes']}",
        "command": f"python benchmarks/serve_load.py --levels {args.levels} --run-tokens {args.run_tokens} --requests {args.requests}"
        + (" --infinity-python PYTHON" if args.infinity_python else ""),
        "reference": None,
        "row_header": "load",
        "columns": columns,
        "rows": rows,
        "raw": report,
    }


def offline_rate(model, texts: list[str], seed: int) -> float:
    """Texts/s of a plain ``model.encode`` of 240 of the texts (half with each template), now."""
    sample = random.Random(seed).sample(texts, 240)
    started = time.perf_counter()
    for task, half in (("query", sample[:120]), ("document", sample[120:])):
        model.encode(half, task=task)
    return len(sample) / (time.perf_counter() - started)


def budget_name(budget: str) -> str:
    """``0.5s`` -> "0.5 s a run (adaptive)", ``256`` -> "256 tokens a run"."""
    return f"{budget[:-1]} s a run (adaptive)" if str(budget).endswith("s") else f"{int(budget):,} tokens a run"


def start_server(model_name: str, budget: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    flag = ["--run-seconds", budget[:-1]] if budget.endswith("s") else ["--max-run-tokens", str(int(budget))]
    server = subprocess.Popen(
        [sys.executable, "-m", "echo_embeddings.cli", "serve", model_name, "--port", str(port), "--log-level", "warning", *flag],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    wait_ready(server, f"{url}/health")
    return server, url


def wait_ready(server: subprocess.Popen, ready_url: str) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(ready_url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.kill()
    raise RuntimeError(f"the server did not become ready in 300 s (exit code {server.poll()})")


def infinity_folder(model_name: str, where: Path) -> Path:
    """The model's transformers folder as Infinity's older transformers reads it: the same weights
    (linked), the tokenizer class named as transformers 4 knows it."""
    from echo_embeddings.engine.loading import resolve

    source = Path(resolve(model_name))
    folder = where / "model"
    folder.mkdir()
    for item in source.iterdir():
        if item.name != "tokenizer_config.json":
            (folder / item.name).symlink_to(item)
    config = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def infinity_levels(args: argparse.Namespace, texts: list[str]) -> tuple[list[dict], str]:
    """The loaded levels against Infinity serving the base model with mean pooling, beside
    Infinity's own offline encode of the same sample as ours."""
    python = Path(args.infinity_python)
    version = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('infinity-emb'))"], capture_output=True, text=True, check=True
    ).stdout.strip()
    levels = []
    with tempfile.TemporaryDirectory() as where:
        folder = infinity_folder(args.model, Path(where))
        spec = Path(where) / "texts.json"
        spec.write_text(json.dumps({"texts": texts, "sample": random.Random(args.seed).sample(range(len(texts)), 240)}), encoding="utf-8")
        vectors_path = Path(where) / "vectors.npy"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}
        helper = subprocess.run(
            [str(python), str(ROOT / "benchmarks" / "infinity_offline.py"), str(folder), str(spec), str(vectors_path)],
            capture_output=True, text=True, check=True, env=env,
        )
        offline = json.loads(helper.stdout.strip().splitlines()[-1])["offline_texts_per_s"]
        vectors = np.load(vectors_path)
        expected = {"document": vectors / np.linalg.norm(vectors, axis=1, keepdims=True)}
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [str(python.parent / "infinity_emb"), "v2", "--model-id", str(folder), "--served-model-name", "smollm2-mean", "--engine", "torch",
             "--device", "cpu", "--batch-size", "32", "--pooling-method", "mean", "--no-model-warmup", "--url-prefix", "/v1",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            env=env,
        )
        try:
            wait_ready(server, f"{url}/v1/models")
            for clients in (int(c) for c in args.levels.split(",")):
                if clients < 32:
                    continue
                result = asyncio.run(load_level(
                    url, texts, expected, clients, max(1, args.requests // clients), args.seconds, args.seed,
                    with_task=False, model="smollm2-mean", tolerance=1e-3,
                ))
                result |= {"infinity": True, "offline_texts_per_s": offline, "vs_offline": round(result["texts_per_s"] / offline, 3)}
                levels.append(result)
                print(
                    f"Infinity {version}, {clients:>4} clients: {result['texts_per_s']:6.1f} texts/s = {result['vs_offline']:.2f} x its offline ({offline:.1f}); "
                    f"query p50/p95/p99 {result['query_p50_s']}/{result['query_p95_s']}/{result['query_p99_s']} s; errors {result['errors']} {result['first_errors'][:1]}",
                    flush=True,
                )
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(120)
    return levels, version


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "stsb_dev.tsv", help="a TSV with sentence1/sentence2 (STS-B dev)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--texts", type=int, default=600, help="distinct sentences drawn from (default: %(default)s)")
    parser.add_argument("--levels", default="1,8,32,128", help="concurrent clients per level")
    parser.add_argument(
        "--run-tokens", default="0.5s,256,1s", help="scheduler budgets to measure: seconds a run (adaptive, '0.5s') or fixed tokens a run (default: %(default)s)"
    )
    parser.add_argument("--requests", type=int, default=240, help="requests per level, split across its clients (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=180, help="time limit per level (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--infinity-python", default="", help="a Python with infinity-emb[torch,server]: the loaded levels against Infinity too")
    parser.add_argument("--out", default="", help="write the results as JSON here")
    args = parser.parse_args()

    texts = sentences(args.data, args.texts)
    model = echo_embeddings.load(args.model, "echo")
    expected = {task: model.encode(texts, task=task, normalize_embeddings=True) for task in ("query", "document")}
    levels, peaks, exit_codes = [], [], []
    for number, run_tokens in enumerate(args.run_tokens.split(",")):
        server, url = start_server(args.model, run_tokens)
        try:
            for clients in (int(c) for c in args.levels.split(",")):
                if number and clients < 32:
                    continue  # the later budgets: the loaded levels only
                before = offline_rate(model, texts, args.seed + clients)
                per_client = max(1, args.requests // clients)
                result = asyncio.run(load_level(url, texts, expected, clients, per_client, args.seconds, args.seed))
                after = offline_rate(model, texts, args.seed + clients)
                offline = (before + after) / 2  # the ceiling right before and right after the level
                result |= {
                    "run_tokens": run_tokens, "offline_texts_per_s": round(offline, 2), "offline_before_after": [round(before, 2), round(after, 2)],
                    "vs_offline": round(result["texts_per_s"] / offline, 3),
                }
                if number == 0:
                    lock = lock_per_call(model, texts, min(clients, 32), max(1, 60 // min(clients, 32)), args.seed)
                    result |= {"lock_per_call_texts_per_s": round(lock, 2), "lock_vs_offline": round(lock / offline, 3)}
                levels.append(result)
                print(
                    f"{budget_name(run_tokens)}, {clients:>4} clients: {result['texts_per_s']:6.1f} texts/s = {result['vs_offline']:.2f} x offline "
                    f"({offline:.1f}; lock per call {result.get('lock_vs_offline', '-')}); "
                    f"query p50/p95/p99 {result['query_p50_s']}/{result['query_p95_s']}/{result['query_p99_s']} s; errors {result['errors']}; "
                    f"load generator {result['generator_cores']} cores; model busy {result.get('model_busy')}, {result.get('texts_per_run')} texts a run, "
                    f"{result.get('in_run_texts_per_s')} texts/s in runs, {result.get('http_ms_per_request')} ms a request outside the scheduler, "
                    f"budget at the end {result.get('token_budget_at_end')} tokens",
                    flush=True,
                )
            peaks.append(peak_rss_mib(server.pid))
        finally:
            server.send_signal(signal.SIGTERM)
            exit_codes.append(server.wait(120))
    report = {"model": args.model, "texts": len(texts), "levels": levels, "server_peak_rss_mib": round(max(peaks), 1), "server_exit_codes": exit_codes}
    if args.infinity_python:
        report["infinity"], report["infinity_version"] = infinity_levels(args, texts)
    print(f"server peak RSS {max(peaks):.0f} MiB; exit codes after SIGTERM {exit_codes}")
    if args.out:
        Path(args.out).write_text(json.dumps(as_table(report, args), indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
