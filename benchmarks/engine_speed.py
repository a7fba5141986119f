"""Side-by-side speed of the engine: the same texts, the same weights, one process.

    python benchmarks/engine_speed.py                       # 2,000 STS-B dev sentences, smollm2-135m
    python benchmarks/engine_speed.py --texts 20000 --rows a,c
    python benchmarks/engine_speed.py --dtype float32                      # the tables' fp32 rows

Rows: (a) stock sentence-transformers Transformer + mean Pooling, no prompt; (b) echo the way
the original code runs it (benchmarks/reference_echo.py); (c) this package's echo; (d) PromptEOL
and PromptEOL + token prepending; (e) echo with an early exit. Each row reports texts/s, useful
tokens/s (tokens the method strictly needs: no padding, no cached prefix), peak memory, time
relative to (a), and useful MFU: the FLOPs of those tokens over time and over the matmul peak
measured in this run. The last lines compare (c) with the package's unoptimized path
(no prefix cache, input-order batches) and with (b).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import csv
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from reference_echo import reference_echo
from torch import nn

import echo_embeddings
from echo_embeddings import Engine
from echo_embeddings.engine.batching import shared_prefix
from echo_embeddings.engine.model_parts import decoder_layers, resolve_output_layer
from echo_embeddings.engine.loading import resolve
from echo_embeddings.engine.defaults import preset_defaults

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb_dev.tsv"


def read_texts(path: Path, n: int, column: str | None) -> tuple[list[str], bool]:
    """``n`` texts: the named column, else every text column of an STS file, else whole lines;
    and whether the file had to be repeated to reach ``n``."""
    with path.open(encoding="utf-8", newline="") as f:
        if path.suffix in (".tsv", ".csv"):
            rows = list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ",", quoting=csv.QUOTE_NONE))
            columns = [column] if column else [c for c in ("sentence1", "sentence2", "text") if c in rows[0]]
            texts = [row[c] for c in columns for row in rows]
        else:
            texts = f.read().splitlines()
    repeated = len(texts) < n
    if repeated:  # repeat the file to reach the size asked for (stated in the output)
        texts = texts * (n // len(texts) + 1)
    return texts[:n], repeated


class PeakMemory:
    """Peak memory during a block: on CUDA the allocator's peak above what was allocated before
    (weights excluded); on CPU the process's resident set, sampled (weights and earlier rows'
    freed-but-kept memory included, so compare CPU rows loosely)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = 0
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self._rss() - self.base)
            time.sleep(0.005)

    def __exit__(self, *_: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.running = False
            self.thread.join()


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """Best FLOP/s of square matmuls in this dtype on this device, measured now."""
    best = 0.0
    for n in (1024, 2048, 4096) if device.type == "cuda" else (1024, 2048):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        reps = 20 if device.type == "cuda" else 3
        for _ in range(2):
            a @ b
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start))
    return best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@dataclass
class Cost:
    """Counts of what a method strictly needs: the tokens it must compute and their FLOPs."""

    tokens: int = 0
    flops: float = 0.0

    def add(self, length: int, cached: int, layers: int, per_token: float, width: int) -> None:
        """A sequence of ``length`` tokens whose first ``cached`` come from the cache."""
        new = length - cached
        # Linear layers: 2 FLOPs per weight; attention: QK^T and AV over the causal context.
        context = sum(range(cached + 1, length + 1))
        self.tokens += new
        self.flops += layers * (new * per_token + 4 * width * context)


def layer_flops(model: nn.Module) -> tuple[float, int]:
    """Matmul FLOPs per token per decoder layer (2 per weight), and the attention width."""
    layer = decoder_layers(model)[0]
    weights = sum(p.numel() for p in layer.parameters() if p.dim() == 2)
    config = model.config
    width = getattr(config, "num_attention_heads", 1) * (getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    return 2.0 * weights, width


def package_cost(engine: Engine, texts: list[str]) -> Cost:
    layers = resolve_output_layer(engine.model, engine.output_layer)[0]
    per_token, width = layer_flops(engine.model)
    cost = Cost()
    for item in engine.prepare(texts):
        cached = len(shared_prefix(list(item))) if engine.fast_paths["prefix_cache"] == "on" else 0
        for row in item:
            cost.add(len(row.ids), cached, layers, per_token, width)
    return cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--column", default=None)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--rows", default="a,b,c,c-padded,d,e", help="which rows to run (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="fixed batch size of rows (a) and (b)")
    parser.add_argument("--check", type=int, default=256, help="texts compared with the unoptimized path")
    parser.add_argument("--early-exit", type=int, default=-9, help="output layer of row (e) (default: hidden state 22 of 30)")
    parser.add_argument("--dtype", default="auto", help="the decoder's precision for every row (default: auto, bf16 where native)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args()

    texts, repeated = read_texts(args.data, args.texts, args.column)
    torch.set_grad_enabled(False)
    folder = resolve(args.model)
    st = echo_embeddings.load(folder, "echo", dtype=args.dtype, device=args.device)
    base = st[0].engine
    model, tokenizer, device = base.model, base.tokenizer, base.device
    dtype = next(model.parameters()).dtype
    per_token, width = layer_flops(model)
    n_layers = len(decoder_layers(model))
    wanted = set(args.rows.split(","))

    rows: dict[str, tuple[Callable[[list[str]], object], Cost]] = {}
    if "a" in wanted:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

        transformer = Transformer(folder, model_kwargs={"dtype": dtype})
        # sentence-transformers 6 wraps text in a chat-capable tokenizer's chat template (a system
        # prompt of 20+ tokens for SmolLM2); row (a) is meant to be the bare text, so drop that modality.
        config = {k: v for k, v in transformer.modality_config.items() if k != "message"}
        transformer = Transformer(folder, model_kwargs={"dtype": dtype}, modality_config=config, module_output_name=transformer.module_output_name)
        if transformer.tokenizer.pad_token is None:
            transformer.tokenizer.pad_token = transformer.tokenizer.eos_token
        stock = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean")], device=str(device))
        cost = Cost()
        for ids in stock.tokenizer(texts, add_special_tokens=True)["input_ids"]:
            cost.add(len(ids), 0, n_layers, per_token, width)
        rows["(a) sentence-transformers mean, no prompt"] = (lambda t: stock.encode(t, batch_size=args.batch_size), cost)
    echo = Engine(model, tokenizer, "echo")
    if "b" in wanted:
        rows["(b) reference echo (fixed batches, no cache)"] = (lambda t: reference_echo(model, tokenizer, t, args.batch_size), package_cost(echo, texts))
    engines: dict[str, Engine] = {}
    if "c" in wanted:
        # Through the model's encode: the path every surface (LangChain, LlamaIndex, the CLI) takes.
        rows["(c) echo"] = (lambda t: st.encode(t), package_cost(echo, texts))
        engines["(c) echo"] = echo
    if "c-padded" in wanted:
        engines["(c) echo, padded batches (packing off)"] = Engine(model, tokenizer, "echo", packing=False)
    if "d" in wanted:
        engines["(d) prompteol"] = Engine(model, tokenizer, "prompteol")
        tp = preset_defaults(model, "prompteol+tp")
        engines[f"(d) prompteol+tp {tp.tp_start}..{tp.tp_stop - 1} @ {tp.output_layer}"] = Engine(model, tokenizer, "prompteol+tp")
        engines["(d) prompteol @ same layer, no tp"] = Engine(model, tokenizer, "prompteol", output_layer=tp.output_layer)
    if "e" in wanted:
        exit_at = resolve_output_layer(model, args.early_exit)[0]
        engines[f"(e) echo, early exit at hidden state {exit_at}/{n_layers}"] = Engine(model, tokenizer, "echo", output_layer=args.early_exit)
    for name, engine in engines.items():
        if name not in rows:
            rows[name] = (lambda t, engine=engine: engine.encode(t), package_cost(engine, texts))  # the package's own batching

    peak = matmul_peak(device, dtype)
    for run, _ in rows.values():  # warm up every path (allocator, kernels, prefix cache)
        run(texts[:8])
    results = {}
    for name, (run, cost) in rows.items():
        with PeakMemory(device) as memory:
            start = time.perf_counter()
            run(texts)
            sync(device)
            seconds = time.perf_counter() - start
        results[name] = (seconds, cost, memory.peak)
        print(f"  done {name}: {seconds:.1f} s", flush=True)

    print(f"\n{args.model} on {device} ({str(dtype).removeprefix('torch.')}, {torch.get_num_threads()} threads), {len(texts)} texts from {args.data.name}{' (file repeated)' if repeated else ''}")
    print(f"(a), (b): batches of {args.batch_size}; the package: token-count sorted batches within its token budget")
    print(f"matmul peak measured now: {peak / 1e9:.1f} GFLOP/s")
    versions = {name: importlib.metadata.version(name) for name in ("torch", "transformers", "sentence-transformers")}
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    for name, engine in engines.items():
        print(f"fast paths of {name}: {engine.fast_paths}")
    reference = next((s for n, (s, _, _) in results.items() if n.startswith("(a)")), None)
    header = f"{'row':52s} {'seconds':>8s} {'texts/s':>8s} {'tok/s':>8s} {'peak MiB':>9s} {'vs (a)':>7s} {'MFU':>6s}"
    print(header + "\n" + "-" * len(header))
    for name, (seconds, cost, memory) in results.items():
        ratio = f"{seconds / reference:7.2f}" if reference else f"{'':>7s}"
        mfu = cost.flops / seconds / peak
        print(f"{name:52s} {seconds:8.1f} {len(texts) / seconds:8.1f} {cost.tokens / seconds:8.0f} {memory / 2**20:9.0f} {ratio} {mfu:6.2f}")
    timed = {n[:3]: s for n, (s, _, _) in reversed(results.items())}  # the first row of each letter
    if "(b)" in timed and "(c)" in timed:
        print(f"\n(b)/(c) time: {timed['(b)'] / timed['(c)']:.2f}")
    tp_rows = [s for n, (s, _, _) in results.items() if n.startswith("(d) prompteol")]
    if len(tp_rows) == 3:
        print(f"TP / no-TP time at the same output layer: {tp_rows[1] / tp_rows[2]:.3f}")

    sample = texts[: args.check]
    fast = echo.encode(sample)
    unoptimized = Engine(model, tokenizer, "echo", prefix_cache=False, packing=False)
    slow = torch.cat([unoptimized.forward(unoptimized.collate(unoptimized.prepare(sample[i : i + 32]), "mean")) for i in range(0, len(sample), 32)])
    cosine = nn.functional.cosine_similarity(fast, slow.float().cpu())
    print(f"(c) vs the unoptimized path on {len(sample)} texts: min cosine {cosine.min():.6f}, max |diff| {(fast - slow.cpu()).abs().max():.2e}")
    if "b" in wanted:
        cosine = nn.functional.cosine_similarity(fast, reference_echo(model, tokenizer, sample, args.batch_size))
        print(f"(c) vs (b) reference echo: min cosine {cosine.min():.6f}")


if __name__ == "__main__":
    main()
