"""Ray Data scale-out against the single-process core: texts/s and Ray's overhead per batch.

    python benchmarks/ray_scaleout.py                      # 4,000 STS-B dev sentences, smollm2-135m, echo
    python benchmarks/ray_scaleout.py --texts 20000 --model tiny

Rows, in one run on the same texts and weights: (1) the core in this process (``model.encode``);
(2) Ray with 1 actor; (3) Ray with 2 actors. Ray rows read the corpus from a text file, embed,
and write Parquet, as ``echo-embeddings embed --ray`` does; the model load per actor is timed
apart. Ray's overhead per batch is (Ray 1 actor - core) / number of Ray batches. Two cores will
not double: both actors share them (torch then runs one thread per actor).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb_dev.tsv"


def sentences(path: Path, n: int) -> list[str]:
    rows = [line.rstrip("\n").split("\t") for line in path.open(encoding="utf-8")][1:]
    texts = [t for row in rows for t in row[1:3]]
    return [texts[i % len(texts)] for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="alias, folder, or 'tiny' (a random 4-layer test decoder)")
    parser.add_argument("--strategy", default="echo")
    parser.add_argument("--texts", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=256, help="rows per Ray batch")
    args = parser.parse_args()

    import ray

    import echo_embeddings
    from echo_embeddings.scale_out import embed_corpus

    work = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    model_name = args.model
    if model_name == "tiny":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from helpers import save_tiny_model

        model_name = str(save_tiny_model(work / "tiny"))
    texts = sentences(DATA, args.texts)
    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n", encoding="utf-8")

    start = time.perf_counter()
    model = echo_embeddings.load(model_name, args.strategy, device="cpu")
    load_seconds = time.perf_counter() - start
    model.encode(texts[:16])
    start = time.perf_counter()
    single = model.encode(texts)
    core_seconds = time.perf_counter() - start
    del model

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    results = {}
    cores = os.cpu_count() or 2
    for actors in (1, 2):
        out = work / f"out-{actors}"
        start = time.perf_counter()
        # Each actor reserves its share of the cores, and Ray gives it that many threads.
        rows = embed_corpus(
            [corpus], out, actors=actors, cpus_per_actor=cores / actors, batch_size=args.batch_size,
            model=model_name, strategy=args.strategy, device="cpu",
        )
        results[actors] = time.perf_counter() - start
        assert rows == len(texts)
        import pyarrow.parquet as pq

        table = pq.read_table(out)
        got = {row_id: np.asarray(v, dtype=np.float32) for row_id, v in zip(table["id"].to_pylist(), table["embedding"].to_pylist())}
        worst = max(np.abs(got[f"corpus.txt:{i + 1}"] - single[i]).max() for i in range(len(texts)))
        print(f"  ray, {actors} actor(s): {results[actors]:.1f} s, max |diff| to the core {worst:.1e}", flush=True)
    ray.shutdown()

    batches = -(-len(texts) // args.batch_size)
    print(f"\n{args.model} / {args.strategy}, {len(texts)} texts, {os.cpu_count()} CPU cores, Ray {ray.__version__}")
    print(f"model load (once per actor): {load_seconds:.1f} s; Ray rows include starting their actors and loading the model")
    print(f"{'row':28s} {'seconds':>8s} {'texts/s':>8s} {'vs core':>8s}")
    print(f"{'core, one process':28s} {core_seconds:8.1f} {len(texts) / core_seconds:8.1f} {1.0:8.2f}")
    for actors, seconds in results.items():
        print(f"{f'ray, {actors} actor(s)':28s} {seconds:8.1f} {len(texts) / seconds:8.1f} {core_seconds / seconds:8.2f}")
    print(f"Ray overhead per batch of {args.batch_size} (1 actor vs core, load included): {(results[1] - core_seconds) / batches:.2f} s over {batches} batches")


if __name__ == "__main__":
    main()
