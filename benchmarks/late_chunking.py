"""Late chunking on SciFact: whole documents, naive chunks, plain causal late chunking and echo late
chunking, side by side (nDCG@10 with bootstrap 95% intervals over queries), plus throughput on
1,000-token documents.

    python benchmarks/late_chunking.py --model smollm2-135m --corpus-size 300 --output-layer -3
    python benchmarks/late_chunking.py --model gemma3-270m --corpus-size 300 --output-layer -3

A document scores as its best chunk. Every row uses the same ``--output-layer``. Rows:

- whole: the document embedded as one text (nothing truncated: it fits max_seq_length);
- naive-N: each N-token chunk embedded alone with echo's document template;
- causal-late-N: the ``mean`` strategy (one copy) with its chunks pooled from the document's forward;
- echo-late-N: echo late chunking as it ships (a chunk's tokens pooled from both copies);
- echo-2nd-late-N: echo late chunking from the second copy only (``copies="pooled"``).

The whole document and its late chunks at 64 and 256 tokens share one forward per document here
(the engine pools overlapping token ranges); the script checks on a few documents that this equals
``model.encode_chunks`` for each size, which is what ``echo-embeddings evaluate --chunking late`` runs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import echo_embeddings
from echo_embeddings import evaluation as ev
from echo_embeddings.late_chunking import after_first_module, late_chunk_vectors, spans_to_tokens, split_by_tokens, tokenize_documents

SIZES = (64, 256)


def normalized(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x.float(), p=2, dim=1).numpy()


def late_in_one_pass(model, documents: list[str], copies: str) -> dict[str, list[np.ndarray]]:
    """Per document: the whole-document vector and its late chunks at each size, from one forward."""
    engine = model[0].engine
    docs = tokenize_documents(engine, documents)
    per_size = {n: [spans_to_tokens(d, split_by_tokens(d, n)) for d in docs] for n in SIZES}
    ranges = [[(0, len(d.ids)), *(r for n in SIZES for r in per_size[n][i])] for i, d in enumerate(docs)]
    vectors = late_chunk_vectors(engine, docs, ranges, copies=copies, batch_size=256)
    out: dict[str, list[np.ndarray]] = {"whole": [], **{f"late-{n}": [] for n in SIZES}}
    for i, v in enumerate(vectors):
        v = normalized(after_first_module(model, v))
        out["whole"].append(v[:1])
        at = 1
        for n in SIZES:
            k = len(per_size[n][i])
            out[f"late-{n}"].append(v[at : at + k])
            at += k
    # The public path gives the same vectors.
    check = documents[:4]
    for n in SIZES:
        found = model.encode_chunks(check, chunk_tokens=n, copies=copies, normalize_embeddings=True)
        for got, want in zip(found, out[f"late-{n}"]):
            assert np.allclose(np.stack([c.embedding for c in got]), want, atol=2e-4), f"one-pass and encode_chunks differ at {n} tokens"
    return out


def scores(task: ev.Retrieval, queries: np.ndarray, chunks: list[np.ndarray]) -> np.ndarray:
    """Per query nDCG@10, a document scoring as its best chunk."""
    doc_ids = list(task.corpus)
    ends = np.cumsum([len(c) for c in chunks])
    similarity = np.maximum.reduceat(queries @ np.concatenate(chunks).T, np.r_[0, ends[:-1]], axis=1)
    top = np.argsort(-similarity, axis=1, kind="stable")[:, :10]
    return np.array([ev.ndcg_at_k([doc_ids[j] for j in top[i]], task.qrels[q]) for i, q in enumerate(task.queries)])


def interval(per_query: np.ndarray, rounds: int = 2000) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    means = per_query[rng.integers(0, len(per_query), (rounds, len(per_query)))].mean(axis=1)
    return 100 * float(np.percentile(means, 2.5)), 100 * float(np.percentile(means, 97.5))


def throughput(model, documents: list[str], tokens: int = 1000, count: int = 16) -> dict[str, float]:
    """Documents of ``tokens`` tokens embedded whole, against the same text as 250-token documents."""
    tok = model[0].tokenizer
    ids = [t for d in documents for t in tok(d, add_special_tokens=False)["input_ids"]]
    long_docs = [tok.decode(ids[i * tokens : (i + 1) * tokens]) for i in range(count)]
    short_docs = [tok.decode(ids[i * 250 : (i + 1) * 250]) for i in range(count * tokens // 250)]
    model.encode(long_docs[:2], task="document")  # warm up
    out = {}
    for name, docs in (("1000-token docs", long_docs), ("250-token docs", short_docs)):
        start = time.perf_counter()
        model.encode(docs, task="document")
        out[name] = count * tokens / (time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact_dev"))
    parser.add_argument("--corpus-size", type=int, default=300)
    parser.add_argument("--output-layer", type=int, default=None, help="hidden state pooled by every row (default: the model's default)")
    parser.add_argument("--queries", type=int, default=None, help="use the first N queries only (a quick check)")
    parser.add_argument("--out", default="results/late_chunking")
    args = parser.parse_args()
    task = ev.read_retrieval(args.data)
    if args.queries:
        keep = list(task.queries)[: args.queries]
        task = ev.Retrieval(task.name, task.corpus, {q: task.queries[q] for q in keep}, {q: task.qrels[q] for q in keep})
    task = ev.sample_corpus(task, args.corpus_size)
    documents = list(task.corpus.values())
    query_texts = list(task.queries.values())
    print(f"{args.model}: {len(task.queries)} queries over {len(documents)} documents")
    results: dict[str, np.ndarray] = {}
    timings: dict[str, float] = {}

    layer = {} if args.output_layer is None else {"output_layer": args.output_layer}
    echo = echo_embeddings.load(args.model, "echo", **layer)
    echo_queries = echo.encode(query_texts, task="query", normalize_embeddings=True)
    start = time.perf_counter()
    for name, chunks in late_in_one_pass(echo, documents, "all").items():
        if name != "whole":
            results[f"echo-{name}"] = scores(task, echo_queries, chunks)
    timings["echo late, both copies (one pass)"] = time.perf_counter() - start
    start = time.perf_counter()
    for name, chunks in late_in_one_pass(echo, documents, "pooled").items():
        results[name if name == "whole" else f"echo-2nd-{name}"] = scores(task, echo_queries, chunks)
    timings["echo whole + late, 2nd copy (one pass)"] = time.perf_counter() - start
    for n in SIZES:
        start = time.perf_counter()
        found = echo.encode_chunks(documents, chunk_tokens=n, chunking="naive", normalize_embeddings=True)
        timings[f"naive-{n}"] = time.perf_counter() - start
        results[f"naive-{n}"] = scores(task, echo_queries, [np.stack([c.embedding for c in f]) for f in found])
    speed = throughput(echo, documents)
    del echo

    causal = echo_embeddings.load(args.model, "mean", **layer)
    causal_queries = causal.encode(query_texts, task="query", normalize_embeddings=True)
    start = time.perf_counter()
    for name, chunks in late_in_one_pass(causal, documents, "all").items():
        results["causal-whole" if name == "whole" else f"causal-{name}"] = scores(task, causal_queries, chunks)
    timings["causal whole + late (one pass)"] = time.perf_counter() - start

    order = ["whole", "causal-whole", *(f"{kind}-{n}" for n in SIZES for kind in ("naive", "causal-late", "echo-2nd-late", "echo-late"))]
    print(f"\n{'configuration':<18} {'nDCG@10':>8}  95% interval")
    for name in order:
        low, high = interval(results[name])
        print(f"{name:<18} {100 * results[name].mean():8.2f}  [{low:.1f}, {high:.1f}]")
    for n in SIZES:
        for other in ("naive", "causal-late"):
            gain = results[f"echo-late-{n}"] - results[f"{other}-{n}"]
            low, high = interval(gain)
            print(f"echo-late-{n} minus {other}-{n}: {100 * gain.mean():+.2f} [{low:+.1f}, {high:+.1f}]")
    print("\nseconds:", {k: round(v, 1) for k, v in timings.items()})
    print("tokens/s:", {k: round(v) for k, v in speed.items()}, f"ratio 1000/250: {speed['1000-token docs'] / speed['250-token docs']:.2f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "model": args.model, "output_layer": args.output_layer, "queries": len(task.queries), "documents": len(documents),
        "ndcg@10": {k: 100 * float(v.mean()) for k, v in results.items()}, "interval": {k: interval(v) for k, v in results.items()},
        "seconds": timings, "tokens_per_second": speed, "versions": {"echo-embeddings": echo_embeddings.__version__, "torch": torch.__version__},
    }
    (out / f"{args.model}.json").write_text(json.dumps(report, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
