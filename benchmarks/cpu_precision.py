"""Precision on this CPU, side by side: fp32, bf16 and int8 weights for the embedded models, in one
process: echo texts/s, cosine to the fp32 vectors, weight memory, STS and retrieval quality.

    python benchmarks/cpu_precision.py --out benchmarks/results/cpu_precision.json
    python benchmarks/cpu_precision.py --models smollm2-135m --rows fp32,bf16 --speed-texts 500

Speed: ``--speed-texts`` STS-B dev sentences through ``model.encode`` (echo, the default batch
schedule), each row timed ``--rounds`` times in turn (fp32, bf16, int8, fp32, ...), best round
kept, so the VM's drifting speed affects the rows alike. Quality: STS-B dev (Spearman x 100) and
SciFact on ``--corpus`` abstracts (nDCG@10 x 100), each with the change against fp32 and its 95%
paired bootstrap interval over pairs / queries. Cosine: the lowest and mean cosine
between each row's vectors and fp32's over the speed texts.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import time
from pathlib import Path

import numpy as np
import torch

import echo_embeddings
from echo_embeddings.data import read_retrieval, read_table, sample_corpus
from echo_embeddings.engine.precision import cpu_has_native_bf16
from echo_embeddings.evaluation import ndcg_at_k, spearman

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
ROWS = {"fp32": {"dtype": "float32"}, "bf16": {"dtype": "bfloat16"}, "int8": {"dtype": "bfloat16", "quantize": "int8"}}
"""The int8 row keeps bf16 activations: on this CPU the int8 weights are dequantized into bf16 matmuls."""
NAMES = {"smollm2-135m": "SmolLM2-135M", "gemma3-270m": "Gemma 3 270M"}


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes the decoder's weights hold, quantized ones counted by their inner tensors."""
    total = 0
    for p in model.parameters():
        data = p.data
        if type(data) is torch.Tensor:
            total += data.numel() * data.element_size()
        else:  # a tensor subclass (torchao): its int8 data and scales
            names, _ = data.__tensor_flatten__()
            total += sum(getattr(data, n).numel() * getattr(data, n).element_size() for n in names)
    return total


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def interval(difference, n: int, rounds: int = 1000, seed: int = 0) -> dict:
    """A cell: ``difference(all items)`` and its 95% bootstrap interval, resampling items (the same
    ones for both rows being compared)."""
    rng = np.random.default_rng(seed)
    draws = [difference(rng.integers(0, n, n)) for _ in range(rounds)]
    return {"value": difference(np.arange(n)), "decimals": 2, "low": float(np.percentile(draws, 2.5)), "high": float(np.percentile(draws, 97.5))}


def quality(model, sets: dict, retrieval) -> dict:
    """Per-item scores: STS cosines (with gold) and per-query nDCG@10."""
    out = {}
    for name, rows in sets.items():
        texts = sorted({t for r in rows for t in r[1:]})
        vectors = dict(zip(texts, unit(model.encode(texts))))
        cos = np.array([vectors[r[1]] @ vectors[r[2]] for r in rows])
        out[name] = (np.array([float(r[0]) for r in rows]), cos)
    doc_ids, query_ids = list(retrieval.corpus), list(retrieval.queries)
    docs = unit(model.encode_document([retrieval.corpus[d] for d in doc_ids]))
    queries = unit(model.encode_query([retrieval.queries[q] for q in query_ids]))
    top = np.argsort(-(queries @ docs.T), axis=1, kind="stable")[:, :10]
    out["SciFact"] = np.array([ndcg_at_k([doc_ids[j] for j in top[i]], retrieval.qrels[q]) for i, q in enumerate(query_ids)])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m")
    parser.add_argument("--rows", default="fp32,bf16,int8", help="which precisions (default: %(default)s)")
    parser.add_argument("--speed-texts", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--corpus", type=int, default=300, help="SciFact abstracts (the 150 dev queries' own plus a seeded sample)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    sts = {"STS-B dev": read_table(args.data / "stsb_dev.tsv", ["score", "sentence1", "sentence2"])}
    retrieval = sample_corpus(read_retrieval(args.data / "scifact_dev"), args.corpus)
    speed_texts = [t for r in sts["STS-B dev"] for t in r[1:]][: args.speed_texts]
    rows_wanted = [r for r in args.rows.split(",") if r]
    table_rows = []
    for name in args.models.split(","):
        models = {row: echo_embeddings.load(name, "echo", device="cpu", **ROWS[row]) for row in rows_wanted}
        for model in models.values():
            model.encode(speed_texts[:16])  # warm up (prefix cache, allocator)
        seconds = {row: float("inf") for row in models}
        vectors = {}
        for _ in range(args.rounds):
            for row, model in models.items():
                start = time.perf_counter()
                vectors[row] = model.encode(speed_texts)
                seconds[row] = min(seconds[row], time.perf_counter() - start)
                print(f"  {name} {row}: {len(speed_texts) / seconds[row]:.1f} texts/s", flush=True)
        scores = {row: quality(model, sts, retrieval) for row, model in models.items()}
        base = "fp32" if "fp32" in models else rows_wanted[0]
        for row, model in models.items():
            cos = (unit(vectors[row]) * unit(vectors[base])).sum(axis=1)
            (gold, sts_row), (_, sts_base) = scores[row]["STS-B dev"], scores[base]["STS-B dev"]
            ndcg_row, ndcg_base = scores[row]["SciFact"], scores[base]["SciFact"]
            cells = [
                {"value": len(speed_texts) / seconds[row], "decimals": 1},
                {"value": seconds[base] / seconds[row], "decimals": 2},
                {"value": float(cos.min()), "decimals": 5},
                {"value": weight_bytes(model[0].model) / 2**20, "decimals": 0},
                {"value": 100 * spearman(sts_row, gold), "decimals": 2},
                interval(lambda i: 100 * (spearman(sts_row[i], gold[i]) - spearman(sts_base[i], gold[i])), len(gold)) if row != base else None,
                {"value": 100 * float(ndcg_row.mean()), "decimals": 2},
                interval(lambda i: 100 * float(ndcg_row[i].mean() - ndcg_base[i].mean()), len(ndcg_row)) if row != base else None,
            ]
            label = f"{NAMES.get(name, name)}, {row}"
            table_rows.append({"label": label, "cells": cells, "fast_paths": model[0].engine.fast_paths, "loaded_as": str(model[0].placement)})
        del models

    columns = ["texts/s", "speed vs fp32", "min cosine to fp32", "weights MiB", "STS-B dev", "change vs fp32", "SciFact", "change vs fp32 "]
    print(f"\n{'row':26s} " + " ".join(f"{c.strip():>15s}" for c in columns))
    for r in table_rows:
        cells = [f"{c['value']:.{c['decimals']}f}" + (f" [{c['low']:+.2f},{c['high']:+.2f}]" if "low" in c else "") if c else "" for c in r["cells"]]
        print(f"{r['label']:26s} " + " ".join(f"{c:>15s}" for c in cells))
    if args.out:
        versions = {n: importlib.metadata.version(n) for n in ("torch", "transformers", "torchao") if _installed(n)}
        result = {
            "title": "Precision on the CPU",
            "row_header": "model, precision",
            "columns": columns,
            "rows": table_rows,
            "unit": (f"{len(speed_texts)} STS-B dev sentences, echo, best of {args.rounds} interleaved rounds, {torch.get_num_threads()} threads; "
                     f"native bf16: {cpu_has_native_bf16()}; quality x 100; changes vs fp32 with 95% paired bootstrap intervals; "
                     f"SciFact nDCG@10 on {len(retrieval.corpus)} abstracts; versions {versions}"),
            "command": "python benchmarks/cpu_precision.py --out benchmarks/results/cpu_precision.json",
        }
        args.out.write_text(json.dumps(result, indent=1) + "\n")


def _installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


if __name__ == "__main__":
    main()
