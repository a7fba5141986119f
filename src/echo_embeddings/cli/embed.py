"""``echo-embeddings embed``: a corpus into a ``.npy`` file, or with ``--ray`` files and folders into
Parquet on a Ray cluster.

    echo-embeddings embed corpus.txt --out vectors.npy --model smollm2-135m --strategy echo

reads one text per line (or ``--column`` of a TSV/CSV) lazily and writes float32 rows in input
order, so memory stays bounded for any corpus size; ``numpy.load(out, mmap_mode="r")`` reads it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..data import DataError, read_texts
from ..engine.inputs import normalize_task
from ..streaming import save_npy
from .common import DEFAULT_BATCH_SIZE, load_model


def add_parser(commands: Any) -> None:
    embed = commands.add_parser(
        "embed", help="embed a text file into a .npy file, or with --ray files and folders into Parquet on a Ray cluster"
    )
    embed.add_argument("input", nargs="+", help="text file, TSV or CSV ('-' reads stdin); with --ray also JSONL, Parquet and folders")
    embed.add_argument("--out", required=True, help="the .npy file to write (float32 [texts, dim], input order); with --ray a Parquet folder")
    embed.add_argument("--column", default=None, help="read this column (a TSV/CSV with a header; with --ray also JSONL/Parquet; default there: text)")
    ray_group = embed.add_argument_group("scale-out on Ray Data")
    ray_group.add_argument("--ray", action="store_true", help="run on Ray: a local one, or the cluster at --address / $RAY_ADDRESS")
    ray_group.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else start a local Ray)")
    ray_group.add_argument("--actors", type=int, default=1, help="model replicas (Ray actors); one per GPU on a cluster (default: %(default)s)")
    ray_group.add_argument("--cpus-per-actor", type=float, default=1, help="CPUs (and so torch threads) per actor (default: %(default)s)")
    ray_group.add_argument("--gpus-per-actor", type=float, default=0, help="GPUs reserved per actor (default: %(default)s)")
    ray_group.add_argument("--id-column", default=None, help="take row ids from this column (default: file name and row number)")
    ray_group.add_argument("--keep-text", action="store_true", help="write the text column next to id and embedding")
    ray_group.add_argument("--overwrite", action="store_true", help="replace what the --out folder holds (by default it must be new or empty)")
    embed.add_argument("--model", default=None, help="alias, id, folder or .gguf (default: the embedded smollm2-135m)")
    embed.add_argument("--strategy", default=None, help="preset or template (default: echo, or a saved model's own)")
    embed.add_argument("--task", choices=["sentence", "query", "document"], default="sentence", help="which template (default: %(default)s)")
    embed.add_argument("--normalize", action="store_true", help="unit-length vectors")
    embed.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="most texts per batch (default: %(default)s); the token budget usually decides")
    embed.add_argument("--max-batch-tokens", type=int, default=None, help="token budget per batch (default: 2048 on CPU, 32768 on CUDA)")
    embed.add_argument("--chunk-size", type=int, default=4096, help="texts read and sorted at a time (bounds memory)")
    embed.add_argument("--device", default=None)


def embed_on_ray(args: argparse.Namespace) -> None:
    from .. import scale_out

    ray = scale_out.require_ray()
    options: dict[str, Any] = {"model": args.model, "strategy": args.strategy, "normalize": args.normalize, "batch_size": args.batch_size}
    if normalize_task(args.task):
        options["task"] = normalize_task(args.task)
    if args.device:
        options["device"] = args.device
    if args.max_batch_tokens is not None:
        options["max_batch_tokens"] = args.max_batch_tokens
    ray.init(address=args.address or os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True)
    try:
        rows = scale_out.embed_corpus(
            args.input, args.out, actors=args.actors, cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor, text_column=args.column or "text",
            id_column=args.id_column, keep_text=args.keep_text, overwrite=args.overwrite, **options,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        raise DataError(str(error)) from error
    print(f"wrote {rows} rows (id, embedding{', text' if args.keep_text else ''}) as Parquet to {args.out}")


def run(args: argparse.Namespace) -> None:
    if args.ray:
        return embed_on_ray(args)
    if len(args.input) != 1:
        raise DataError(f"embed takes one input file without --ray, got {len(args.input)}")
    args.input = args.input[0]
    if not args.input == "-" and not Path(args.input).is_file():
        raise DataError(f"no such file: {args.input}")
    model = load_model(args.model, args.strategy, args.device)
    if args.max_batch_tokens is not None:
        model[0].max_batch_tokens = args.max_batch_tokens
    task = {"task": normalize_task(args.task)} if normalize_task(args.task) else {}
    chunks = model.stream(
        read_texts(args.input, args.column),
        chunk_size=args.chunk_size,
        batch_size=args.batch_size,
        normalize_embeddings=args.normalize,
        show_progress_bar=True,
        **task,
    )
    rows, dim = save_npy(chunks, args.out)
    print(f"wrote {rows} x {dim} float32 to {args.out}")
