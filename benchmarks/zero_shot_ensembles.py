"""All-but-the-top and ensembles, zero-shot, on the four STS sets of ``tune_zero_shot.py``, with
bootstrap 95% intervals: can post-processing or combining strategies close the gap to a trained
encoder?

    python benchmarks/zero_shot_ensembles.py --model smollm2-135m --presets echo,ke,pcot,prompteol \\
        --cache results/zero_shot/states --configs "ke@28/center,ke@28/abtt1,pcot@30/pca128,ke@28/center+pcot@30/pca128"

A configuration is ``preset@hidden-state/transform``; ``+`` joins configurations into an ensemble
whose cosine is the mean of its members' cosines (the same as concatenating the members' unit
vectors). Transforms, each fitted without labels on the sentences of the set it is scored on (as
``fit_whitening`` is on a user's corpus): ``raw``, ``center``, ``pcaK`` (PCA whitening to K
dimensions) and ``abttK`` (all-but-the-top, Mu and Viswanath 2018: remove the mean and the K
strongest principal directions, no rescaling). ``--search`` also ranks every single
configuration and the best two- and three-member ensembles by the STS-B dev + SICK trial average;
``--greedy N`` builds an N-member ensemble by forward selection on that average (an optimistic
ceiling: the members are chosen on the sets they are scored on).

Pooled states are cached per preset (``--cache``): the hidden states from ``n-8`` to ``n``, pooled
by the strategy's own pooling in one forward, so rescoring costs no model run.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from tune_whitening import pairs
from tune_zero_shot import STS, pooled_states, spearman_rows, transforms, unit

import echo_embeddings
from echo_embeddings.forward import decoder_layers

ROUNDS = 1000
KINDS = ["raw", "center", "abtt1", "abtt3", "abtt5", "abtt10", "pca64", "pca128", "pca256"]


def states_for(model_name: str, preset: str, sts: dict, cache: Path) -> tuple[list[int], dict[str, np.ndarray]]:
    path = cache / f"{model_name}_{preset.replace('+', '_')}.npz"
    if not path.exists():
        model = echo_embeddings.load(model_name, preset, output_layer=-1, device="cpu")
        n = len(decoder_layers(model[0].engine.model))
        states = list(range(n - 8, n + 1))
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, states=np.array(states), **{name: pooled_states(model, a + b, None, states) for name, (a, b, _) in sts.items()})
    saved = np.load(path)
    return [int(s) for s in saved["states"]], {name: saved[name] for name in sts}


def transform(x: np.ndarray, kind: str) -> np.ndarray:
    """Unit vectors of ``x`` after ``kind``, fitted on ``x`` itself: raw, center and pcaK with the
    shipped ``Whitening`` (through ``tune_zero_shot.transforms``), abttK here."""
    name, k = kind.rstrip("0123456789"), int(kind[len(kind.rstrip("0123456789")) :] or 0)
    if kind in ("raw", "center") or (name == "pca" and k > 0):
        mean, projection = transforms(x, [k] if k else [])[kind]
        return unit((x - mean) @ projection)
    if name != "abtt" or k < 1:
        raise ValueError(f"unknown transform {kind!r}; use raw, center, pcaK or abttK")
    centered = (x - x.mean(0)).astype(np.float64)
    top = np.linalg.svd(centered, full_matrices=False)[2][:k]
    return unit(centered - centered @ top.T @ top).astype(np.float32)


class Scorer:
    def __init__(self, model_name: str, presets: list[str], cache: Path) -> None:
        self.sts = {name: pairs(file, start, count) for name, (file, start, count) in STS.items()}
        self.golds = {name: gold for name, (_, _, gold) in self.sts.items()}
        self.states = {p: states_for(model_name, p, self.sts, cache) for p in presets}
        self._vectors: dict[tuple[str, int, str, str], np.ndarray] = {}

    def vectors(self, member: str, name: str) -> np.ndarray:
        preset, rest = member.split("@")
        state, kind = rest.split("/")
        key = (preset, int(state), kind, name)
        if key not in self._vectors:
            states, by_set = self.states[preset]
            if int(state) not in states:
                raise ValueError(f"{member}: hidden state {state} is not cached (have {states[0]}..{states[-1]})")
            self._vectors[key] = transform(by_set[name][states.index(int(state))], kind)
        return self._vectors[key]

    def cosines(self, config: str, name: str) -> np.ndarray:
        members = config.split("+")
        half = len(self.golds[name])
        return sum((v[:half] * v[half:]).sum(1) for v in (self.vectors(m, name) for m in members)) / len(members)

    def points(self, config: str) -> list[float]:
        return [float(spearman_rows(self.cosines(config, name), self.golds[name])[0]) for name in self.golds]

    def with_intervals(self, config: str) -> list[tuple[float, float, float]]:
        out = []
        for name, gold in self.golds.items():
            index = np.random.default_rng(0).integers(0, len(gold), (ROUNDS, len(gold)))
            cos = self.cosines(config, name)
            out.append((float(spearman_rows(cos, gold)[0]), *np.percentile(spearman_rows(cos, gold, index), [2.5, 97.5])))
        return out

    def difference(self, a: str, b: str) -> list[tuple[float, float, float]]:
        out = []
        for name, gold in self.golds.items():
            index = np.random.default_rng(1).integers(0, len(gold), (ROUNDS, len(gold)))
            ca, cb = self.cosines(a, name), self.cosines(b, name)
            draws = spearman_rows(ca, gold, index) - spearman_rows(cb, gold, index)
            out.append((float(spearman_rows(ca, gold)[0] - spearman_rows(cb, gold)[0]), *np.percentile(draws, [2.5, 97.5])))
        return out


def dev_average(scores: list[float]) -> float:
    return (scores[0] + scores[1]) / 2


def search(scorer: Scorer, per_preset: int = 8) -> None:
    singles = [f"{p}@{s}/{k}" for p, (states, _) in scorer.states.items() for s in states for k in KINDS]
    ranked = sorted(((c, scorer.points(c)) for c in singles), key=lambda r: -dev_average(r[1]))
    print("\nbest single configurations (STS-B dev + SICK trial average):")
    for config, scores in ranked[:15]:
        print(f"  {config:<24} " + " ".join(f"{v:5.1f}" for v in scores) + f"  avg {dev_average(scores):.1f}")
    # Ensemble members: each preset's best few, so a strategy strong on one set only still takes part.
    leaders = [c for p in scorer.states for c in [c for c, _ in ranked if c.startswith(f"{p}@")][:per_preset]]
    pairs_ = sorted(
        ((f"{a}+{b}", scorer.points(f"{a}+{b}")) for a, b in itertools.combinations(leaders, 2) if a.split("/")[0] != b.split("/")[0]),
        key=lambda r: -dev_average(r[1]),
    )
    print("best two-member ensembles:")
    for config, scores in pairs_[:10]:
        print(f"  {config:<48} " + " ".join(f"{v:5.1f}" for v in scores) + f"  avg {dev_average(scores):.1f}")
    triples = sorted(
        ((f"{p}+{c}", scorer.points(f"{p}+{c}")) for p, _ in pairs_[:10] for c in leaders if c not in p.split("+")),
        key=lambda r: -dev_average(r[1]),
    )
    print("best three-member ensembles:")
    for config, scores in triples[:5]:
        print(f"  {config:<72} " + " ".join(f"{v:5.1f}" for v in scores) + f"  avg {dev_average(scores):.1f}")


def greedy(scorer: Scorer, steps: int) -> None:
    """Forward selection: each step adds the member (repeats allowed, which weights it) that most
    raises the STS-B dev + SICK trial average. Chosen on those two sets, so their scores are optimistic."""
    singles = [f"{p}@{s}/{k}" for p, (states, _) in scorer.states.items() for s in states for k in KINDS]
    chosen: list[str] = []
    print("\ngreedy ensemble (members chosen on STS-B dev + SICK trial):")
    for step in range(steps):
        chosen.append(max(singles, key=lambda c: dev_average(scorer.points("+".join([*chosen, c])))))
        scores = scorer.points("+".join(chosen))
        print(f"  {step + 1}: {'+'.join(chosen)}  " + " ".join(f"{v:5.1f}" for v in scores) + f"  avg {dev_average(scores):.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--presets", default="echo,ke,pcot,prompteol")
    parser.add_argument("--cache", default="results/zero_shot/states")
    parser.add_argument("--configs", default="", help="comma-separated configurations for the table (preset@state/transform, + joins)")
    parser.add_argument("--baseline", default="", help="a configuration every table row is compared with (paired bootstrap)")
    parser.add_argument("--search", action="store_true", help="rank every single configuration and the best ensembles")
    parser.add_argument("--greedy", type=int, default=0, help="build an ensemble of N members by forward selection on the two dev sets")
    args = parser.parse_args()
    scorer = Scorer(args.model, args.presets.split(","), Path(args.cache))
    names = list(STS)
    print(f"{args.model}; Spearman x 100, bootstrap 95% intervals over pairs; columns: {', '.join(names)}, STS-B dev + SICK trial")
    for config in [c for c in args.configs.split(",") if c]:
        cells = scorer.with_intervals(config)
        line = " | ".join(f"{p:.1f} [{lo:.1f}, {hi:.1f}]" for p, lo, hi in cells)
        print(f"| {config} | {line} | {dev_average([c[0] for c in cells]):.1f} |")
        if args.baseline and config != args.baseline:
            diff = " | ".join(f"{p:+.1f} [{lo:+.1f}, {hi:+.1f}]" for p, lo, hi in scorer.difference(config, args.baseline))
            print(f"|   minus {args.baseline} | {diff} | |")
    if args.search:
        search(scorer)
    if args.greedy:
        greedy(scorer, args.greedy)


if __name__ == "__main__":
    main()
