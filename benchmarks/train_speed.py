"""Fine-tuning speed on the CPU or GPU at hand, side by side in one run, with the stock
SentenceTransformerTrainer (CoSENT, echo): full fine-tuning, LoRA on every layer, LoRA on the layers
below the pooled hidden state, and the same with the frozen layers' states reused from the second
epoch on. Every run trains two epochs over the same sample of both STS training files; the table
gives each epoch's time, pairs/s, the time one epoch over both whole files would take, and the dev
Spearman reached.

    python benchmarks/train_speed.py --model smollm2-135m --pairs 320 --dev-pairs 500
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

import echo_embeddings
from echo_embeddings import evaluation as ev
from echo_embeddings import training
from echo_embeddings.engine.model_parts import resolve_output_layer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


class EpochClock(TrainerCallback):
    """Seconds of each epoch."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_epoch_begin(self, *args: object, **kwargs: object) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, *args: object, **kwargs: object) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def spearman(model, pairs) -> float:
    return ev.evaluate_sts(lambda texts, task: model.encode(texts, normalize_embeddings=True), pairs)["spearman"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--pairs", type=int, default=320, help="training pairs sampled from both files (seed 0)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--top", type=int, default=7, help="LoRA on this many layers below the pooled hidden state")
    parser.add_argument("--dev-pairs", type=int, default=500)
    parser.add_argument("--skip-full", action="store_true", help="leave out full fine-tuning and LoRA on every layer (slow)")
    args = parser.parse_args()
    data = training.read_training_files([DATA / "stsb_train.tsv", DATA / "sick_train.tsv"])
    sample = training.TrainingData(data.kind, random.Random(0).sample(data.rows, args.pairs), data.source)
    dev = ev.read_table(DATA / "stsb_dev.tsv", ["score", "sentence1", "sentence2"])[: args.dev_pairs]
    probe = echo_embeddings.load(args.model, "echo")
    depth = resolve_output_layer(probe[0].model, probe[0].engine.output_layer)[0]
    top = list(range(depth - args.top, depth))
    runs = {} if args.skip_full else {"full fine-tuning": {"lora": False}, "LoRA r16, every layer": {"lora": True, "reuse_frozen": False}}
    runs[f"LoRA r16, layers {top[0]}-{top[-1]}"] = {"lora": True, "lora_layers": top, "reuse_frozen": False}
    runs[f"LoRA r16, layers {top[0]}-{top[-1]}, reuse"] = {"lora": True, "lora_layers": top, "reuse_frozen": True}
    print(
        f"{args.model}: {args.pairs} of {len(data)} training pairs, 2 epochs of {args.batch_size}-pair steps; pooled hidden state {depth}; "
        f"STS-B dev first {len(dev)} pairs"
    )
    zero = spearman(probe, dev)
    rows = []
    for name, options in runs.items():
        model = echo_embeddings.load(args.model, "echo")
        clock = EpochClock()
        with tempfile.TemporaryDirectory() as out:
            training.train(
                model, sample, out, epochs=2, batch_size=args.batch_size, save_steps=10**9, show_progress_bar=False, callbacks=[clock], **options
            )
        rows.append((name, clock.seconds, spearman(model, dev)))
        print(f"  {name}: epochs {', '.join(f'{s:.1f}' for s in clock.seconds)} s", flush=True)
    base = sum(rows[0][1])
    print(f"\nzero-shot echo: STS-B dev {zero:.1f}")
    print(f"{'run':<36} {'epoch 1 s':>9} {'epoch 2 s':>9} {'pairs/s 1':>9} {'pairs/s 2':>9} {'time vs first':>13} {'both files, epoch 1 / later':>28} {'STS-B dev':>9}")
    for name, (first, second), score in rows:
        rates = [args.pairs / first, args.pairs / second]
        whole = " / ".join(f"{len(data) / rate / 60:.1f} min" for rate in rates)
        print(f"{name:<36} {first:9.1f} {second:9.1f} {rates[0]:9.2f} {rates[1]:9.2f} {(first + second) / base:13.2f} {whole:>28} {score:9.1f}")


if __name__ == "__main__":
    main()
