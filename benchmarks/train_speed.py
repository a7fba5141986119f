"""Fine-tuning speed on the CPU or GPU at hand: pairs/s of full fine-tuning, LoRA on every layer and
LoRA on the top layers, side by side, with the stock SentenceTransformerTrainer (CoSENT, echo), and
the dev Spearman each reaches in the same number of steps.

    python benchmarks/train_speed.py --model smollm2-135m --steps 20 --dev-pairs 500
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import echo_embeddings
from echo_embeddings import evaluation as ev
from echo_embeddings import training

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def spearman(model, pairs) -> float:
    return ev.evaluate_sts(lambda texts, task: model.encode(texts, normalize_embeddings=True), pairs)["spearman"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dev-pairs", type=int, default=500)
    args = parser.parse_args()
    data = training.read_training_files([DATA / "stsb_train.tsv", DATA / "sick_train.tsv"])
    dev = ev.read_table(DATA / "stsb_dev.tsv", ["score", "sentence1", "sentence2"])[: args.dev_pairs]
    n_layers = echo_embeddings.load(args.model, "echo")[0].model.config.num_hidden_layers
    runs = {
        "full fine-tuning": {"lora": False},
        "LoRA r16, every layer": {"lora": True},
        f"LoRA r16, top {n_layers // 4} layers": {"lora": True, "lora_layers": list(range(n_layers - n_layers // 4, n_layers))},
    }
    print(f"{args.model}: {len(data)} training pairs; {args.steps} steps of {args.batch_size}; STS-B dev first {len(dev)} pairs")
    zero = spearman(echo_embeddings.load(args.model, "echo"), dev)
    rows = []
    for name, options in runs.items():
        model = echo_embeddings.load(args.model, "echo")
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            training.train(model, data, out, max_steps=args.steps, batch_size=args.batch_size, save_steps=10**9, show_progress_bar=False, **options)
            seconds = time.perf_counter() - start
        rows.append((name, seconds, args.steps * args.batch_size / seconds, spearman(model, dev)))
    base = rows[0][1]
    print(f"\nzero-shot echo: STS-B dev {zero:.1f}")
    print(f"{'run':<28} {'seconds':>8} {'pairs/s':>8} {'time vs full':>13} {'STS-B dev':>10}")
    for name, seconds, rate, score in rows:
        epoch = len(data) / rate / 60
        print(f"{name:<28} {seconds:8.1f} {rate:8.2f} {seconds / base:13.2f} {score:10.1f}   (one epoch over both files: {epoch:.0f} min)")


if __name__ == "__main__":
    main()
