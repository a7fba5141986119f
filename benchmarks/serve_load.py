"""Load on the OpenAI-compatible server: throughput and latency with 1 to 128 concurrent clients,
beside the offline ``model.encode`` of the same texts (the ceiling) and the lock-per-call path the
adapters used before the scheduler.

    python benchmarks/serve_load.py --data path/to/stsb_dev.tsv --out benchmarks/results/serve_load.json

Every client sends requests of 1-16 sentences (seeded), alternately with the query and the document
template, and checks every answer against the offline vectors of the same texts (count, order,
values to 1e-4). One more client sends one-sentence queries throughout, for the latency a RAG query
sees under that load. The server runs in its own process on 127.0.0.1, started and stopped here;
every level is bounded in requests and time.

Each level is run once per ``--run-tokens`` budget (the scheduler's tokens per model call: the
trade between throughput and query latency); the later budgets only at 32 clients and more. The
offline ceiling is measured again right before each level, so that a machine whose speed drifts
(a shared 2-core VM) still gives honest ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
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


async def load_level(url: str, texts: list[str], expected: dict[str, np.ndarray], clients: int, requests_per_client: int, seconds: float, seed: int) -> dict:
    """``clients`` concurrent clients plus one query probe; every answer is checked."""
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
            got = np.array([d["embedding"] for d in data], dtype=np.float32)
            want = np.stack([expected[task][texts.index(t)] for t in batch])
            if np.abs(got - want).max() > 1e-4:
                errors.append(f"vectors differ by {np.abs(got - want).max():.2e}")

        async def client(number: int) -> None:
            nonlocal sent_texts
            rng = random.Random(seed * 1000 + number)
            for i in range(requests_per_client):
                if stop.is_set():
                    return
                batch = rng.sample(texts, rng.randint(1, 16))
                task = "query" if (number + i) % 2 else "document"
                started = time.perf_counter()
                response = await http.post("/v1/embeddings", json={"input": batch, "input_type": task, "model": "echo"})
                latencies.append(time.perf_counter() - started)
                sent_texts += len(batch)
                await check(batch, task, response)

        async def probe() -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                text = rng.choice(texts)
                started = time.perf_counter()
                response = await http.post("/v1/embeddings", json={"input": [text], "input_type": "query"})
                probe_latencies.append(time.perf_counter() - started)
                await check([text], "query", response)
                await asyncio.sleep(0.05)

        probe_task = asyncio.create_task(probe())
        started = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.gather(*(client(n) for n in range(clients))), timeout=seconds)
        except asyncio.TimeoutError:
            stop.set()
        elapsed = time.perf_counter() - started
        stop.set()
        await probe_task
    return {
        "clients": clients, "seconds": round(elapsed, 2), "requests": len(latencies), "texts": sent_texts,
        "texts_per_s": round(sent_texts / elapsed, 2), "errors": len(errors), "first_errors": errors[:3],
        "request_p50_s": round(percentile(latencies, 50), 3), "request_p99_s": round(percentile(latencies, 99), 3),
        "query_p50_s": round(percentile(probe_latencies, 50), 3), "query_p95_s": round(percentile(probe_latencies, 95), 3),
        "query_p99_s": round(percentile(probe_latencies, 99), 3), "query_probes": len(probe_latencies),
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

    columns = ["texts/s", "offline texts/s", "vs offline encode", "lock per call vs offline", "query p50 s", "query p95 s", "query p99 s", "errors"]
    rows = []
    for level in report["levels"]:
        rows.append({
            "label": f"{level['clients']} clients, {level['run_tokens']} tokens a run",
            "cells": [
                cell(level["texts_per_s"], 1), cell(level["offline_texts_per_s"], 1), cell(level["vs_offline"], 2), cell(level.get("lock_vs_offline"), 2),
                cell(level["query_p50_s"], 2), cell(level["query_p95_s"], 2), cell(level["query_p99_s"], 2), cell(level["errors"], 0),
            ],
        })
    return {
        "title": f"Serving {report['model']} on this 2-core CPU: throughput and one-sentence query latency under load",
        "unit": f"server peak RSS {report['server_peak_rss_mib']:.0f} MiB; exit code after SIGTERM {report['server_exit_codes']}",
        "command": f"python benchmarks/serve_load.py --levels {args.levels} --run-tokens {args.run_tokens} --requests {args.requests}",
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


def start_server(model_name: str, run_tokens: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "echo_embeddings.cli", "serve", model_name, "--port", str(port), "--log-level", "warning", "--max-run-tokens", str(run_tokens)],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return server, url
        except httpx.HTTPError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("the server did not become ready in 300 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "stsb_dev.tsv", help="a TSV with sentence1/sentence2 (STS-B dev)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--texts", type=int, default=600, help="distinct sentences drawn from (default: %(default)s)")
    parser.add_argument("--levels", default="1,8,32,128", help="concurrent clients per level")
    parser.add_argument("--run-tokens", default="256,1024", help="scheduler budgets (tokens a model call) to measure (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=240, help="requests per level, split across its clients (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=180, help="time limit per level (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="write the results as JSON here")
    args = parser.parse_args()

    texts = sentences(args.data, args.texts)
    model = echo_embeddings.load(args.model, "echo")
    expected = {task: model.encode(texts, task=task, normalize_embeddings=True) for task in ("query", "document")}
    levels, peaks, exit_codes = [], [], []
    for number, run_tokens in enumerate(int(t) for t in args.run_tokens.split(",")):
        server, url = start_server(args.model, run_tokens)
        try:
            for clients in (int(c) for c in args.levels.split(",")):
                if number and clients < 32:
                    continue  # the later budgets: the loaded levels only
                offline = offline_rate(model, texts, args.seed + clients)
                per_client = max(1, args.requests // clients)
                result = asyncio.run(load_level(url, texts, expected, clients, per_client, args.seconds, args.seed))
                result |= {"run_tokens": run_tokens, "offline_texts_per_s": round(offline, 2), "vs_offline": round(result["texts_per_s"] / offline, 3)}
                if number == 0:
                    lock = lock_per_call(model, texts, min(clients, 32), max(1, 60 // min(clients, 32)), args.seed)
                    result |= {"lock_per_call_texts_per_s": round(lock, 2), "lock_vs_offline": round(lock / offline, 3)}
                levels.append(result)
                print(
                    f"{run_tokens:>5} tokens a run, {clients:>4} clients: {result['texts_per_s']:6.1f} texts/s = {result['vs_offline']:.2f} x offline "
                    f"({offline:.1f}; lock per call {result.get('lock_vs_offline', '-')}); "
                    f"query p50/p95/p99 {result['query_p50_s']}/{result['query_p95_s']}/{result['query_p99_s']} s; errors {result['errors']}",
                    flush=True,
                )
            peaks.append(peak_rss_mib(server.pid))
        finally:
            server.send_signal(signal.SIGTERM)
            exit_codes.append(server.wait(120))
    report = {"model": args.model, "texts": len(texts), "levels": levels, "server_peak_rss_mib": round(max(peaks), 1), "server_exit_codes": exit_codes}
    print(f"server peak RSS {max(peaks):.0f} MiB; exit codes after SIGTERM {exit_codes}")
    if args.out:
        Path(args.out).write_text(json.dumps(as_table(report, args), indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
