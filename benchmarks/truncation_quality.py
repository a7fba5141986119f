"""Quality at each kept size: STS Spearman when only the leading ``d`` dimensions are kept (and
renormalised), the cut the server's ``dimensions`` makes, for the two kinds of model it allows.

    python benchmarks/truncation_quality.py --pca smollm2-135m --matryoshka path/to/mrl-model --dims 32,64,128,256 \\
        --out benchmarks/results/truncation_quality.json

``--pca MODEL``: the model with a PCA whitening (256 components) fitted without labels on each
set's own sentences, as in the whitening guide. ``--matryoshka FOLDER``: a model trained with
``echo-embeddings train ... --matryoshka-dims``; ``--plain FOLDER`` adds the same training without
Matryoshka, cut the same way, to show what the loss buys; ``--raw MODEL`` the zero-shot echo model
cut as it is, which is what the CLI's and adapters' warnings are about. Sets: STS-B dev and SICK trial (whole),
bootstrap intervals over pairs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import echo_embeddings
from echo_embeddings.data import read_table
from echo_embeddings.evaluation import spearman

ROOT = Path(__file__).resolve().parent.parent
SETS = {"STS-B dev": "stsb_dev.tsv", "SICK trial": "sick_trial.tsv"}


def interval(gold: np.ndarray, cosine: np.ndarray, rounds: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    rng = np.random.default_rng(seed)
    draws = [spearman(cosine[i], gold[i]) for i in (rng.integers(0, len(gold), len(gold)) for _ in range(rounds))]
    return 100 * spearman(cosine, gold), 100 * float(np.percentile(draws, 2.5)), 100 * float(np.percentile(draws, 97.5))


def cut(vectors: np.ndarray, d: int) -> np.ndarray:
    part = vectors[:, :d]
    return part / np.linalg.norm(part, axis=1, keepdims=True)


def scores(model, rows: list[list[str]], dims: list[int], fit_pca: bool) -> dict[int, tuple[float, float, float]]:
    gold = np.array([float(r[0]) for r in rows])
    texts = sorted({t for r in rows for t in r[1:]})
    if fit_pca:
        model = echo_embeddings.load(model, "echo")
        echo_embeddings.fit_whitening(model, texts, dim=max(dims))
    vectors = dict(zip(texts, model.encode(texts, convert_to_numpy=True)))
    a = np.stack([vectors[r[1]] for r in rows])
    b = np.stack([vectors[r[2]] for r in rows])
    out = {}
    for d in [*dims, a.shape[1]] if a.shape[1] not in dims else dims:
        out[d] = interval(gold, (cut(a, d) * cut(b, d)).sum(axis=1))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="folder with stsb_dev.tsv and sick_trial.tsv")
    parser.add_argument("--pca", default=None, help="model to whiten with PCA (fitted on each set's sentences)")
    parser.add_argument("--matryoshka", default=None, help="folder of a model trained with --matryoshka-dims")
    parser.add_argument("--plain", default=None, help="folder of the same training without Matryoshka")
    parser.add_argument("--raw", default=None, help="a model cut as it is, neither whitened nor Matryoshka-trained (what the warnings are about)")
    parser.add_argument("--dims", default="32,64,128,256")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    dims = [int(d) for d in args.dims.split(",")]
    sets = {name: read_table(args.data / file, ["score", "sentence1", "sentence2"]) for name, file in SETS.items()}
    rows: list[dict] = []
    for label, source, fit in (
        (f"{args.pca} echo, PCA whitening", args.pca, True),
        ("Matryoshka-trained echo", args.matryoshka, False),
        ("the same training, no Matryoshka", args.plain, False),
        (f"{args.raw} echo as it is", args.raw, False),
    ):
        if source is None:
            continue
        model = source if fit else echo_embeddings.load(source, "echo" if source == args.raw else None)
        found = {name: scores(model, data, dims, fit) for name, data in sets.items()}
        for d in sorted(found["STS-B dev"]):
            cells = []
            for name in SETS:
                value, low, high = found[name][d]
                cells.append({"value": round(value, 1), "decimals": 1, "low": round(low, 1), "high": round(high, 1)})
            rows.append({"label": f"{label}, first {d} dims", "cells": cells})
            print(f"{label:45s} d={d:4d}  " + "  ".join(f"{c['value']:5.1f} [{c['low']}, {c['high']}]" for c in cells))
    if args.out:
        report = {
            "title": "Quality at each kept size (the server's dimensions): STS Spearman x 100",
            "unit": "Spearman x 100 of cosine on the leading dimensions, renormalised; [a, b]: bootstrap 95% interval",
            "command": "python benchmarks/truncation_quality.py " + " ".join(sys.argv[1:]),
            "reference": "", "row_header": "model, kept dimensions", "columns": list(SETS), "rows": rows,
        }
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
