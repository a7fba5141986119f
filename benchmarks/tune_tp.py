"""Tune token-prepending layers on the development sets (STS-B dev, SICK trial) and print a table.

    python benchmarks/tune_tp.py --model smollm2-135m --pairs 300 --presets prompteol,pcot

For each preset and TP range it runs one pass and scores every output layer at once (the
last token's state after each decoder layer), so a grid costs one forward per range. Scores
are Spearman x 100 of cosine similarity against the gold scores.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

import echo_embeddings
from echo_embeddings import Engine
from echo_embeddings.engine.model_parts import decoder_layers, final_norm

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def read_pairs(path: Path, limit: int) -> tuple[list[str], list[str], np.ndarray]:
    rows = [line.rstrip("\n").split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:]][:limit]
    return [r[1] for r in rows], [r[2] for r in rows], np.array([float(r[0]) for r in rows])


@torch.inference_mode()
def all_layers(embedder: Engine, texts: list[str], batch_size: int = 32) -> torch.Tensor:
    """``[layers + 1, texts, dim]``: the pooled last token after every layer (index 0 = embeddings)."""
    layers = decoder_layers(embedder.model)
    out = torch.zeros(len(layers) + 1, len(texts), embedder.hidden_size)
    prepared = embedder.prepare(texts)
    for start in range(0, len(texts), batch_size):
        batch = embedder.collate(prepared[start : start + batch_size], "last")
        captured: list[torch.Tensor] = []
        handles = [layer.register_forward_hook(lambda _m, _a, output: captured.append(output[0] if isinstance(output, tuple) else output)) for layer in layers]
        handles.append(layers[0].register_forward_pre_hook(lambda _m, args, kwargs: captured.append(args[0] if args else kwargs["hidden_states"]), with_kwargs=True))
        try:
            embedder.forward(batch)
        finally:
            for handle in handles:
                handle.remove()
        states = captured  # embeddings (the pre-hook fires first), then each layer's output
        states[-1] = final_norm(embedder.model)(states[-1])  # the last hidden state is normalised
        rows = torch.arange(batch.input_ids.shape[0])
        for i, hidden in enumerate(states):
            pooled = hidden[rows, batch.last_index].float()
            pooled = pooled.view(batch.groups, -1, pooled.shape[-1]).mean(0)  # average a text's prompts
            out[i, start : start + len(pooled)] = pooled
    return out


def score(a: torch.Tensor, b: torch.Tensor, gold: np.ndarray) -> np.ndarray:
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).numpy()
    return np.array([100 * spearmanr(c, gold).statistic for c in cos])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--pairs", type=int, default=300, help="pairs taken from each dev set")
    parser.add_argument("--presets", default="prompteol,pcot")
    parser.add_argument("--ranges", default="", help="e.g. '1-4,1-8' (default: 1..n/8 and 1..n/4)")
    parser.add_argument("--out", default="", help="write the scores as JSON here")
    args = parser.parse_args()

    model = echo_embeddings.load(args.model, "prompteol")
    base = model[0].engine
    n = len(decoder_layers(base.model))
    ranges = [tuple(int(x) for x in r.split("-")) for r in args.ranges.split(",")] if args.ranges else [(1, n // 8 + 1), (1, n // 4 + 1)]
    sets = {name: read_pairs(DATA / f"{name}.tsv", args.pairs) for name in ("stsb_dev", "sick_trial")}
    results: dict[str, dict[str, list[float]]] = {}
    for preset_name in args.presets.split(","):
        for tp in [(0, 0), *ranges]:
            name = preset_name if tp == (0, 0) else f"{preset_name}+tp"
            embedder = Engine(base.model, base.tokenizer, name, tp_layers=tp if name.endswith("+tp") else None, output_layer=-1, prefix_cache=False)  # every layer's states of the whole prompt
            per_set = []
            for a, b, gold in sets.values():
                states = all_layers(embedder, a + b)
                per_set.append(score(states[:, : len(a)], states[:, len(a) :], gold))
            key = f"{preset_name} tp={tp[0]}..{tp[1] - 1}" if tp != (0, 0) else f"{preset_name} no tp"
            results[key] = {"stsb": per_set[0].tolist(), "sick": per_set[1].tolist()}
            print(f"{key:24s} " + " ".join(f"L{i}:{(s + k) / 2:.1f}" for i, (s, k) in enumerate(zip(*per_set)) if i >= n // 2), flush=True)

    print(f"\n{args.model}: Spearman x100 (STS-B dev / SICK trial, first {args.pairs} pairs each) at selected output layers")
    shown = [n, n - 1, n - 2, n - 4]
    print(f"{'setting':24s} " + " ".join(f"{'layer ' + str(i):>15s}" for i in shown))
    for key, r in results.items():
        print(f"{key:24s} " + " ".join(f"{r['stsb'][i]:6.1f} / {r['sick'][i]:5.1f}" for i in shown))
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "pairs": args.pairs, "layers": n, "results": results}, indent=1))


if __name__ == "__main__":
    main()
