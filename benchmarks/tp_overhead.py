"""Cost of token prepending and the saving of early exit, as time ratios measured in one process.

    python benchmarks/tp_overhead.py --model smollm2-135m --texts 300

Rows run the same texts on the same weights; each is timed ``--repeats`` times (best kept) in
interleaved rounds so that drift of a noisy machine hits every row alike.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import echo_embeddings
from echo_embeddings import Engine
from echo_embeddings.engine.model_parts import decoder_layers

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "stsb_dev.tsv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--texts", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    lines = DATA.read_text(encoding="utf-8").splitlines()[1:]
    texts = [line.split("\t")[1] for line in lines][: args.texts]
    base = echo_embeddings.load(args.model, "prompteol")[0].engine
    n = len(decoder_layers(base.model))
    eol, eol_tp = echo_embeddings.get_preset("prompteol"), echo_embeddings.get_preset("prompteol+tp")
    rows = {
        "prompteol, final layer": Engine(base.model, base.tokenizer, eol),
        f"prompteol+tp 1..{n // 4}, final layer": Engine(base.model, base.tokenizer, eol_tp, tp_layers=(1, n // 4 + 1), output_layer=-1),
        f"prompteol, hidden state {3 * n // 4}": Engine(base.model, base.tokenizer, eol, output_layer=3 * n // 4),
        f"prompteol, hidden state {n // 2}": Engine(base.model, base.tokenizer, eol, output_layer=n // 2),
    }
    best = dict.fromkeys(rows, float("inf"))
    torch.set_grad_enabled(False)
    for _ in range(args.repeats):
        for name, embedder in rows.items():
            start = time.perf_counter()
            embedder.encode(texts, batch_size=32)
            best[name] = min(best[name], time.perf_counter() - start)
    reference = best["prompteol, final layer"]
    print(f"{args.model}, {len(texts)} STS-B sentences, {torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"{'setting':34s} {'seconds':>8s} {'ratio':>7s}")
    for name, seconds in best.items():
        print(f"{name:34s} {seconds:8.2f} {seconds / reference:7.3f}")


if __name__ == "__main__":
    main()
