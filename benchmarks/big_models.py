"""Big decoders on the hardware at hand: peak memory of ``load`` and echo throughput for randomly
initialised checkpoints of Llama 1B and 7B shapes (right for speed and memory, never for quality).

    python benchmarks/big_models.py --out benchmarks/results/big_models.json        # 1B fp32 + bf16, 7B bf16
    python benchmarks/big_models.py --shapes 1b --dtypes bfloat16 --texts 16

Each checkpoint is written once as bf16 safetensors shards (``--folder``, default
``~/.cache/echo-embeddings/random-checkpoints``), with SmolLM2's tokenizer and its 49,152-token
vocabulary (so the 1B shape is Llama 3.2 1B's layers with a smaller embedding table, 1.07B
parameters, and the 7B shape Llama 2 7B's, 6.67B). Every measurement runs in a fresh process:
``peak MiB`` is the process's peak resident memory during ``load`` minus what it held before
(Python, torch), compared with the weights' size in the target dtype; then ``--texts`` STS-B dev
sentences are embedded with echo and the process's peak is read again.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "stsb_dev.tsv"
SHAPES = {
    # name: (hidden, intermediate, layers, heads, kv heads)
    "1b": (2048, 8192, 16, 32, 8),
    "7b": (4096, 11008, 32, 32, 32),
    "tiny": (64, 128, 2, 4, 2),  # for the dry run of the GPU script and the tests
}
VOCAB = 49152


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def write_checkpoint(shape: str, folder: Path, shard_bytes: int = 2 * 2**30) -> Path:
    """A random bf16 checkpoint of ``shape`` in ``folder/llama-<shape>`` (kept: written once)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoTokenizer, LlamaConfig

    from echo_embeddings.engine.loading import resolve

    target = folder / f"llama-{shape}"
    if (target / "config.json").is_file():
        return target
    hidden, intermediate, layers, heads, kv = SHAPES[shape]
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=4096, dtype="bfloat16",
    )
    with torch.device("meta"):
        shapes = {name: p.shape for name, p in AutoModel.from_config(config).named_parameters()}
    staging = folder / f"llama-{shape}.partial"
    staging.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    shard, size, index, files = {}, 0, {}, []

    def flush() -> None:
        nonlocal shard, size
        name = f"model-{len(files) + 1:05d}.safetensors"
        save_file(shard, str(staging / name), metadata={"format": "pt"})
        files.append(name)
        index.update({key: name for key in shard})
        shard, size = {}, 0

    for name, tensor_shape in shapes.items():
        if name.endswith("norm.weight"):
            tensor = torch.ones(tensor_shape, dtype=torch.bfloat16)
        else:
            tensor = (torch.randn(tensor_shape, generator=generator) * 0.02).to(torch.bfloat16)
        shard[name] = tensor
        size += tensor.numel() * 2
        if size >= shard_bytes:
            flush()
    if shard:
        flush()
    total = sum(n.numel() for n in shapes.values()) * 2
    (staging / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": index}))
    config.save_pretrained(staging)
    AutoTokenizer.from_pretrained(resolve("smollm2-135m")).save_pretrained(staging)
    staging.rename(target)
    return target


def measure(folder: Path, dtype: str, texts: int, device: str | None) -> dict:
    """In this process: load, then embed; memory and speed."""
    import torch

    import echo_embeddings

    before = rss_mib()
    start = time.perf_counter()
    model = echo_embeddings.load(str(folder), "echo", dtype=dtype, device=device)
    load_seconds = time.perf_counter() - start
    after_load = peak_mib()
    decoder = model[0].model
    weights = sum(p.numel() * p.element_size() for p in decoder.parameters()) / 2**20
    sentences = [line.split("\t")[1] for line in DATA.read_text(encoding="utf-8").splitlines()[1 : texts + 1]] if DATA.is_file() else [
        f"Sentence number {i} about a man who plays a guitar on a stage." for i in range(texts)
    ]
    cuda = model[0].engine.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model.encode(sentences[:2])  # warm up
    start = time.perf_counter()
    model.encode(sentences)
    seconds = time.perf_counter() - start
    return {
        "parameters": sum(p.numel() for p in decoder.parameters()),
        "dtype": str(next(decoder.parameters()).dtype).removeprefix("torch."),
        "device": str(model[0].engine.device),
        "weights_mib": weights,
        "load_seconds": load_seconds,
        "load_peak_mib": after_load - before,
        "load_peak_vs_weights": (after_load - before) / weights,
        "embed_peak_mib": peak_mib() - before,
        "gpu_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "texts": len(sentences),
        "texts_per_s": len(sentences) / seconds,
    }


def run_child(folder: Path, dtype: str, texts: int, device: str | None) -> dict:
    """``measure`` in a fresh process, so each peak is its own."""
    command = [sys.executable, __file__, "--child", str(folder), "--dtypes", dtype, "--texts", str(texts)] + (["--device", device] if device else [])
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="1b,7b", help="comma-separated: 1b, 7b, tiny")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="dtypes for the 1B shape; larger shapes run bf16 only")
    parser.add_argument("--texts", type=int, default=32, help="sentences embedded per row (the 7B shape: a quarter)")
    parser.add_argument("--folder", type=Path, default=Path.home() / ".cache" / "echo-embeddings" / "random-checkpoints")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args.dtypes, args.texts, args.device)))
        return

    rows = []
    for shape in args.shapes.split(","):
        folder = write_checkpoint(shape, args.folder)
        dtypes = args.dtypes.split(",") if shape != "7b" else ["bfloat16"]
        texts = args.texts if shape != "7b" else max(2, args.texts // 4)
        for dtype in dtypes:
            result = run_child(folder, dtype, texts, args.device)
            print(f"{shape} {dtype}: {json.dumps(result)}", flush=True)
            rows.append((shape, result))
    base = {shape: r["texts_per_s"] for shape, r in rows if r["dtype"] == "float32"}
    header = f"{'checkpoint':28s} {'weights MiB':>11s} {'load peak MiB':>13s} {'peak/weights':>12s} {'embed peak MiB':>14s} {'texts/s':>8s} {'vs fp32':>8s}"
    print("\n" + header + "\n" + "-" * len(header))
    for shape, r in rows:
        ratio = f"{r['texts_per_s'] / base[shape]:8.2f}" if shape in base else f"{'':>8s}"
        label = f"Llama {shape} shape, {r['dtype']}"
        print(f"{label:28s} {r['weights_mib']:11.0f} {r['load_peak_mib']:13.0f} {r['load_peak_vs_weights']:12.2f} {r['embed_peak_mib']:14.0f} {r['texts_per_s']:8.2f} {ratio}")
    if args.out:
        result = {
            "title": "Random Llama-shaped checkpoints: load memory and echo speed",
            "row_header": "checkpoint",
            "columns": ["weights MiB", "load peak MiB", "load peak / weights", "embed peak MiB", "texts/s", "speed vs fp32"],
            "rows": [
                {
                    "label": f"Llama {shape} shape ({r['parameters'] / 1e9:.2f}B), {r['dtype']}",
                    "cells": [
                        {"value": r["weights_mib"], "decimals": 0},
                        {"value": r["load_peak_mib"], "decimals": 0},
                        {"value": r["load_peak_vs_weights"], "decimals": 2},
                        {"value": r["embed_peak_mib"], "decimals": 0},
                        {"value": r["texts_per_s"], "decimals": 2},
                        {"value": r["texts_per_s"] / base[shape], "decimals": 2} if shape in base else None,
                    ],
                    "measured": r,
                }
                for shape, r in rows
            ],
            "unit": (f"{rows[0][1]['device']}, {os.cpu_count()} cores; peaks are the process's resident memory above what it held before "
                     "loading (the embedded STS-B sentences: the 1B shape 32, the 7B shape 8)"),
            "command": "python benchmarks/big_models.py --out benchmarks/results/big_models.json",
        }
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
