"""The GPU check, ready to run on the first CUDA machine: every part of the big-model path that
has never run on a GPU, in one short script with one table.

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.json     # on a CUDA machine, about 5-8 minutes
    python benchmarks/gpu_check.py --dry-run                                  # the same steps, tiny and on the CPU (a test runs this)

Steps, each reported as ok / failed / skipped with its figures:

1. ``engine_speed``: ``benchmarks/engine_speed.py`` rows (a), (b), (c), (e) in bf16 on CUDA (the
   varlen packing kernel, the 32k token budget); the reference-echo ratio (b)/(c), target >= 3.
2. ``7b``: a randomly initialised 7B-shaped checkpoint (``benchmarks/big_models.py``): load time,
   peak GPU memory, echo texts/s.
3. ``bnb4``: the same checkpoint in bitsandbytes 4-bit (``quantization_config``): it loads, is not
   moved, embeds, and its vectors' cosine to bf16.
4. ``oom``: out-of-memory back-off: a memory cap makes a large batch fail, the engine halves it
   and the vectors equal an uncapped run.
5. ``train``: one epoch of ``echo-embeddings train`` (LoRA) in bf16 on 512 STS-B pairs.

A failing step does not stop the others; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import big_models  # noqa: E402

DATA = HERE.parent.parent / "shared" / "data" / "stsb_dev.tsv"


class Check:
    """What a step needs: real sizes on CUDA, tiny ones on the CPU for ``--dry-run``."""

    def __init__(self, dry_run: bool, folder: Path, work: Path) -> None:
        import torch

        self.dry_run = dry_run
        self.device = "cpu" if dry_run else "cuda"
        if not dry_run and not torch.cuda.is_available():
            raise SystemExit("No CUDA device: run with --dry-run to check the script on the CPU")
        self.dtype = "float32" if dry_run else "bfloat16"
        self.folder = folder
        self.work = work
        self.texts = self._texts()

    def _texts(self) -> list[str]:
        n = 64 if self.dry_run else 2000
        if DATA.is_file():
            rows = [line.split("\t") for line in DATA.read_text(encoding="utf-8").splitlines()[1:]]
            texts = [r[1] for r in rows] + [r[2] for r in rows]
        else:
            texts = [f"Sentence {i}: a man plays a guitar while {i % 7} dogs run in the park." for i in range(n)]
        return texts[:n]

    def checkpoint(self) -> Path:
        return big_models.write_checkpoint("tiny" if self.dry_run else "7b", self.folder)

    def data_file(self) -> Path:
        path = self.work / "texts.tsv"
        path.write_text("score\tsentence1\tsentence2\n" + "".join(f"1.0\t{t}\t{t}\n" for t in self.texts), encoding="utf-8")
        return path


def step_engine_speed(check: Check) -> dict:
    model = str(check.checkpoint()) if check.dry_run else "smollm2-135m"
    command = [sys.executable, str(HERE / "engine_speed.py"), "--model", model, "--data", str(check.data_file()),
               "--texts", str(len(check.texts)), "--rows", "a,b,c,e", "--dtype", check.dtype, "--device", check.device,
               "--check", "16" if check.dry_run else "256"]
    if check.dry_run:
        command += ["--early-exit", "-1"]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    ratio = re.search(r"\(b\)/\(c\) time: ([0-9.]+)", done.stdout)
    paths = re.search(r"fast paths of \(c\) echo: (.*)", done.stdout)
    table = done.stdout[done.stdout.index("row ") :].splitlines() if "row " in done.stdout else []
    result = {"b_over_c": float(ratio.group(1)) if ratio else None, "fast_paths": paths.group(1) if paths else None, "table": table}
    if not check.dry_run:
        result["target_b_over_c_at_least_3"] = bool(ratio and float(ratio.group(1)) >= 3)
    return result


def step_7b(check: Check) -> dict:
    return big_models.run_child(check.checkpoint(), check.dtype, 8 if check.dry_run else 64, check.device)


def step_bnb4(check: Check) -> dict:
    if check.dry_run:
        return {"skipped": "bitsandbytes 4-bit needs CUDA"}
    import torch
    from transformers import BitsAndBytesConfig

    import echo_embeddings

    folder = check.checkpoint()
    texts = check.texts[:64]
    reference = echo_embeddings.load(str(folder), "echo", dtype="bfloat16", device="cuda").encode(texts)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_type="nf4")
    model = echo_embeddings.load(str(folder), "echo", dtype="bfloat16", quantization_config=config, device_map={"": 0})
    start = time.perf_counter()
    vectors = model.encode(texts)
    seconds = time.perf_counter() - start
    cosine = (vectors * reference).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(reference, axis=1)
    return {"loaded_as": str(model[0].placement), "gpu_peak_mib": torch.cuda.max_memory_allocated() / 2**20,
            "texts_per_s": len(texts) / seconds, "min_cosine_to_bf16": float(cosine.min())}


def step_oom(check: Check) -> dict:
    import torch

    import echo_embeddings

    model = echo_embeddings.load("smollm2-135m" if not check.dry_run else str(check.checkpoint()), "echo", dtype=check.dtype, device=check.device)
    texts = [" ".join([t] * 20) for t in check.texts[:256]]  # long rows: large activations
    expected = model.encode(texts, batch_size=8)
    if check.dry_run:
        return {"skipped": "an out-of-memory error needs a CUDA memory cap", "vectors": list(expected.shape)}
    model[0].max_batch_tokens = 1 << 20
    free, total = torch.cuda.mem_get_info()
    used = torch.cuda.memory_allocated()
    torch.cuda.set_per_process_memory_fraction(min(1.0, (used + 1.5 * 2**30) / total))  # 1.5 GiB above the weights
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            vectors = model.encode(texts, batch_size=256)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    halvings = [str(w.message) for w in caught if "out of memory" in str(w.message).lower()]
    return {"halvings": len(halvings), "first_warning": halvings[0] if halvings else None,
            "max_abs_diff_to_uncapped": float(np.abs(vectors - expected).max())}


def step_train(check: Check) -> dict:
    pairs = check.work / "pairs.tsv"
    rows = [line.split("\t") for line in DATA.read_text(encoding="utf-8").splitlines()[1:513]] if DATA.is_file() else [
        ["1", t, t] for t in check.texts
    ]
    pairs.write_text("sentence1\tsentence2\n" + "".join(f"{r[1]}\t{r[2]}\n" for r in rows), encoding="utf-8")
    model = str(check.checkpoint()) if check.dry_run else "smollm2-135m"
    command = ["echo-embeddings", "train", str(pairs), "--model", model, "--out", str(check.work / "trained"), "--device", check.device, "--epochs", "1"]
    if check.dry_run:
        command += ["--max-steps", "2", "--batch-size", "8"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return {"seconds": time.perf_counter() - start, "pairs": len(rows), "last_line": done.stdout.strip().splitlines()[-1]}


STEPS: dict[str, Callable[[Check], dict]] = {
    "engine_speed": step_engine_speed,
    "7b": step_7b,
    "bnb4": step_bnb4,
    "oom": step_oom,
    "train": step_train,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: checks the script, measures nothing")
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated (default: all)")
    parser.add_argument("--folder", type=Path, default=Path.home() / ".cache" / "echo-embeddings" / "random-checkpoints")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as work:
        check = Check(args.dry_run, args.folder, Path(work))
        for name in args.steps.split(","):
            start = time.perf_counter()
            try:
                result = STEPS[name](check)
                status = "skipped" if "skipped" in result else "ok"
            except Exception as error:  # reported, and the other steps still run
                result, status = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-4000:]}, "failed"
            results[name] = {"status": status, "seconds": time.perf_counter() - start, **result}
            print(f"{name:14s} {status:8s} {json.dumps({k: v for k, v in result.items() if k not in ('table', 'traceback')})}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"dry_run": args.dry_run, "steps": results}, indent=1) + "\n")
    return 1 if any(r["status"] == "failed" for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
