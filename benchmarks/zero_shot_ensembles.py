"""All-but-the-top and ensembles, zero-shot, on the four STS sets of ``tune_zero_shot.py`` (and,
with ``--tasks``, its SciFact retrieval and classification sets), with bootstrap 95% intervals:
can post-processing or combining strategies close the gap to a trained encoder?

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

On SciFact (``--tasks sts,retrieval``: 150 queries over 300 abstracts) each transform is fitted on
the abstracts and applied to queries and abstracts alike, and an ensemble ranks by the mean of its
members' query-abstract cosines. On classification (``classification``: Banking77, 2,464 texts,
and AmazonCounterfactual, 335, both 80/20 as in ``tune_zero_shot.py``) transforms are fitted on the
training texts and an ensemble's features are its members' vectors side by side.

Pooled states are cached per preset and set (``--cache``): the hidden states from ``n-8`` to ``n``,
pooled by the strategy's own pooling in one forward, so rescoring costs no model run.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from tune_whitening import DATA, pairs
from tune_zero_shot import (
    STS,
    accuracy,
    classification_sets,
    ndcg_of_scores,
    paired_difference,
    pooled_states,
    spearman_rows,
    transforms,
    unit,
    with_interval,
)

import echo_embeddings
from echo_embeddings import evaluation as ev
from echo_embeddings.engine.model_parts import decoder_layers

KINDS = ["raw", "center", "abtt1", "abtt3", "abtt5", "abtt10", "pca64", "pca128", "pca256"]
CORPUS_SIZE = 300
BANKING = 2500
TASKS = ("sts", "retrieval", "classification")


def states_for(model_name: str, preset: str, group: str, texts: dict[str, tuple[list[str], str | None]], cache: Path):
    """``(hidden states, {set: [states, texts, dim]})`` for one preset and one group of sets
    (``texts`` maps a set to its texts and template task), computed once and cached."""
    path = cache / f"{model_name}_{preset.replace('+', '_')}{'' if group == 'sts' else '_' + group}.npz"
    if not path.exists():
        model = echo_embeddings.load(model_name, preset, output_layer=-1, device="cpu")
        n = len(decoder_layers(model[0].engine.model))
        states = list(range(n - 8, n + 1))
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, states=np.array(states), **{name: pooled_states(model, t, task, states) for name, (t, task) in texts.items()})
    saved = np.load(path)
    return [int(s) for s in saved["states"]], {name: saved[name] for name in texts}


def transform(x: np.ndarray, kind: str, fit_on: np.ndarray | None = None, unit_length: bool = True) -> np.ndarray:
    """``x`` after ``kind``, fitted on ``fit_on`` (default ``x`` itself), as unit vectors unless
    ``unit_length`` is false: raw, center and pcaK with the shipped ``Whitening`` (through
    ``tune_zero_shot.transforms``), abttK here."""
    finish = unit if unit_length else np.asarray
    fit_on = x if fit_on is None else fit_on
    name, k = kind.rstrip("0123456789"), int(kind[len(kind.rstrip("0123456789")) :] or 0)
    if kind in ("raw", "center") or (name == "pca" and k > 0):
        fitted = transforms(fit_on, [k] if k else [])
        if kind not in fitted:
            raise ValueError(f"{kind}: {len(fit_on)} texts of dimension {fit_on.shape[1]} cannot give {k} whitened dimensions")
        mean, projection = fitted[kind]
        return finish((x - mean) @ projection)
    if name != "abtt" or k < 1:
        raise ValueError(f"unknown transform {kind!r}; use raw, center, pcaK or abttK")
    mean = fit_on.mean(0)
    top = np.linalg.svd((fit_on - mean).astype(np.float64), full_matrices=False)[2][:k]
    centered = (x - mean).astype(np.float64)
    return finish(centered - centered @ top.T @ top).astype(np.float32)


class Scorer:
    """Scores of configurations (``preset@state/transform``, ``+`` for an ensemble) on the STS
    sets and, when ``tasks`` names them, on SciFact and the classification sets."""

    def __init__(self, model_name: str, presets: list[str], cache: Path, tasks: tuple[str, ...] = ("sts",)) -> None:
        self.sts = {name: pairs(file, start, count) for name, (file, start, count) in STS.items()}
        self.golds = {name: gold for name, (_, _, gold) in self.sts.items()}
        groups = {"sts": {name: (a + b, None) for name, (a, b, _) in self.sts.items()}}
        self.retrieval = self.classes = None
        if "retrieval" in tasks:
            self.retrieval = ev.sample_corpus(ev.read_retrieval(DATA / "scifact_dev"), CORPUS_SIZE)
            groups["retrieval"] = {"corpus": (list(self.retrieval.corpus.values()), "document"), "queries": (list(self.retrieval.queries.values()), "query")}
        if "classification" in tasks:
            self.classes = classification_sets(BANKING)
            groups["classification"] = {
                f"{name}/{part}": (texts, None) for name, task in self.classes.items() for part, texts in (("train", task.train_texts), ("test", task.test_texts))
            }
        self.states: dict[str, tuple[list[int], dict[str, np.ndarray]]] = {}
        for preset in presets:
            arrays: dict[str, np.ndarray] = {}
            for group, texts in groups.items():
                states, found = states_for(model_name, preset, group, texts, cache)
                arrays.update(found)
            self.states[preset] = (states, arrays)
        self.columns = [*STS, *(["SciFact"] if self.retrieval else []), *(list(self.classes) if self.classes else [])]
        self._vectors: dict[tuple[str, int, str, str, str, bool], np.ndarray] = {}

    def vectors(self, member: str, name: str, fit_on: str | None = None, unit_length: bool = True) -> np.ndarray:
        """``member``'s vectors for the texts of ``name``, its transform fitted on those of ``fit_on`` (default ``name``)."""
        preset, rest = member.split("@")
        state, kind = rest.split("/")
        key = (preset, int(state), kind, name, fit_on or name, unit_length)
        if key not in self._vectors:
            states, by_set = self.states[preset]
            if int(state) not in states:
                raise ValueError(f"{member}: hidden state {state} is not cached (have {states[0]}..{states[-1]})")
            at = states.index(int(state))
            self._vectors[key] = transform(by_set[name][at], kind, by_set[fit_on or name][at], unit_length)
        return self._vectors[key]

    def cosines(self, config: str, name: str) -> np.ndarray:
        members = config.split("+")
        half = len(self.golds[name])
        return sum((v[:half] * v[half:]).sum(1) for v in (self.vectors(m, name) for m in members)) / len(members)

    def ndcg(self, config: str) -> np.ndarray:
        """Per-query nDCG@10 on SciFact, ranking by the members' mean query-abstract cosine."""
        members = config.split("+")
        scores = sum(self.vectors(m, "queries", "corpus") @ self.vectors(m, "corpus").T for m in members) / len(members)
        return ndcg_of_scores(self.retrieval, scores)

    def accuracies(self, config: str) -> list[float]:
        """Accuracy per classification set; the features are the members' transformed vectors side
        by side (the classifier standardizes each feature, so no member's scale matters)."""
        members = config.split("+")
        out = []
        for name, task in self.classes.items():
            train = np.hstack([self.vectors(m, f"{name}/train", unit_length=False) for m in members])
            test = np.hstack([self.vectors(m, f"{name}/test", f"{name}/train", unit_length=False) for m in members])
            out.append(accuracy(task, train, test))
        return out

    def points(self, config: str) -> list[float]:
        return [float(spearman_rows(self.cosines(config, name), self.golds[name])[0]) for name in self.golds]

    def with_intervals(self, config: str) -> list[tuple[float, float, float]]:
        """Per column: the score and its bootstrap 95% interval (over pairs or queries; none for accuracy)."""
        return [with_interval(cell, self.golds.get(column)) for column, cell in self.cells(config).items()]

    def difference(self, a: str, b: str) -> list[tuple[float, float, float]]:
        """Per column: ``a`` minus ``b`` on the same bootstrap draws."""
        cells_b = self.cells(b)
        return [paired_difference(cell, cells_b[column], self.golds.get(column)) for column, cell in self.cells(a).items()]

    def cells(self, config: str) -> dict[str, dict]:
        """Per column, the raw scores in ``tune_zero_shot``'s cell form (cosines, per-query nDCG or accuracy)."""
        out: dict[str, dict] = {name: {"cos": self.cosines(config, name)} for name in self.golds}
        if self.retrieval:
            out["SciFact"] = {"per_query": self.ndcg(config)}
        if self.classes:
            out.update({name: {"accuracy": a} for name, a in zip(self.classes, self.accuracies(config))})
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
    parser.add_argument("--tasks", default="sts", help="comma-separated: sts (always), retrieval (SciFact), classification")
    args = parser.parse_args()
    tasks = tuple(dict.fromkeys(["sts", *(t for t in args.tasks.split(",") if t)]))
    if unknown := set(tasks) - set(TASKS):
        parser.error(f"--tasks: unknown {sorted(unknown)}; use {', '.join(TASKS)}")
    scorer = Scorer(args.model, args.presets.split(","), Path(args.cache), tasks)
    print(
        f"{args.model}; Spearman x 100 (STS), nDCG@10 (SciFact), accuracy (classification); bootstrap 95% intervals; "
        f"columns: {', '.join(scorer.columns)}, STS-B dev + SICK trial"
    )

    def cell(p: float, lo: float, hi: float, sign: str = "") -> str:
        return f"{p:{sign}.1f}" if np.isnan(lo) else f"{p:{sign}.1f} [{lo:{sign}.1f}, {hi:{sign}.1f}]"

    for config in [c for c in args.configs.split(",") if c]:
        cells = scorer.with_intervals(config)
        print(f"| {config} | {' | '.join(cell(*c) for c in cells)} | {dev_average([c[0] for c in cells]):.1f} |")
        if args.baseline and config != args.baseline:
            print(f"|   minus {args.baseline} | {' | '.join(cell(*c, sign='+') for c in scorer.difference(config, args.baseline))} | |")
    if args.search:
        search(scorer)
    if args.greedy:
        greedy(scorer, args.greedy)


if __name__ == "__main__":
    main()
