"""``echo-embeddings embed``: a corpus into a ``.npy`` file, or with ``--ray`` files and folders into
Parquet on a Ray cluster.

    echo-embeddings embed corpus.txt --out vectors.npy --model smollm2-135m --strategy echo

reads one text per line (or ``--column`` of a TSV/CSV) lazily and writes one row per line, in input
order, so memory stays bounded for any corpus size; ``numpy.load(out, mmap_mode="r")`` reads it.
A blank line is embedded as an empty text (its row keeps the file's line numbering) and counted in
the summary. ``--precision`` and ``--truncate-dim`` do what sentence-transformers' ``encode`` does
with them; int8/uint8 ranges are calibrated once, on the first chunk, so every row shares them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..data import DataError, read_texts
from ..engine.inputs import normalize_task
from ..output_format import PRECISIONS
from .common import DEFAULT_BATCH_SIZE, add_device, check_model, check_output_file, load_model



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
    embed.add_argument(
        "--precision", choices=PRECISIONS, default="float32",
        help="quantize as sentence-transformers does: int8/uint8 (ranges from the first chunk), or binary/ubinary (8 dimensions a byte) (default: %(default)s)",
    )
    embed.add_argument(
        "--truncate-dim", type=int, default=None, metavar="N",
        help="keep the first N dimensions; this keeps quality only for a model that ends in PCA whitening or was trained with --matryoshka-dims",
    )
    embed.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="most texts per batch (default: %(default)s); the token budget usually decides")
    embed.add_argument("--max-batch-tokens", type=int, default=None, help="token budget per batch (default: 2048 on CPU, 32768 on CUDA)")
    embed.add_argument("--chunk-size", type=int, default=4096, help="texts read and sorted at a time (bounds memory)")
    add_device(embed)


def embed_on_ray(args: argparse.Namespace) -> None:
    from .. import scale_out

    check_model(args.model, args.strategy)
    if args.precision in ("int8", "uint8"):
        raise DataError(
            f"--precision {args.precision} with --ray: every actor must share one scale; pass precision_ranges to "
            "echo_embeddings.scale_out.embed_corpus from Python, or use binary / ubinary"
        )
    ray = scale_out.require_ray()
    options: dict[str, Any] = {
        "model": args.model, "strategy": args.strategy, "normalize": args.normalize, "batch_size": args.batch_size,
        "truncate_dim": args.truncate_dim, "precision": args.precision,
    }
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
    check_output_file(args.out)
    if args.truncate_dim is not None and args.truncate_dim < 1:
        raise DataError(f"--truncate-dim {args.truncate_dim}: give a positive number of dimensions")
    check_model(args.model, args.strategy)
    from ..models.dimensions import truncation_note
    from ..streaming import save_npy

    model = load_model(args.model, args.strategy, args.device, args.dtype, args.quantize)
    if args.max_batch_tokens is not None:
        model[0].max_batch_tokens = args.max_batch_tokens
    if args.truncate_dim is not None:
        note = truncation_note(model, args.truncate_dim)
        if note:
            print(f"echo-embeddings: warning: {note}", file=sys.stderr)
    task = {"task": normalize_task(args.task)} if normalize_task(args.task) else {}
    blank = [0]
    chunks = model.stream(
        _counting_blanks(read_texts(args.input, args.column), blank),
        chunk_size=args.chunk_size,
        batch_size=args.batch_size,
        normalize_embeddings=args.normalize,
        truncate_dim=args.truncate_dim,
        show_progress_bar=True,
        **task,
    )
    rows, dim = save_npy(_quantized(chunks, args.precision), args.out)
    kind = "float32" if args.precision == "float32" else f"{args.precision} ({_DTYPES[args.precision]})"
    blanks = f"; {blank[0]} blank lines embedded as empty texts" if blank[0] else ""
    print(f"wrote {rows} x {dim} {kind} to {args.out}{blanks}")


_DTYPES = {"int8": "int8", "uint8": "uint8", "binary": "int8, 8 dimensions a byte", "ubinary": "uint8, 8 dimensions a byte"}


def _counting_blanks(texts: Iterable[str], count: list[int]) -> Iterator[str]:
    for text in texts:
        if not text.strip():
            count[0] += 1
        yield text


def _quantized(chunks: Iterable[Any], precision: str) -> Iterator[Any]:
    """The chunks in ``precision``; int8/uint8 ranges come from the first chunk and hold for all."""
    from ..output_format import OutputFormat, calibration_ranges

    output = None
    for chunk in chunks:
        if output is None:
            ranges = calibration_ranges(chunk) if precision in ("int8", "uint8") else None
            output = OutputFormat(precision=precision, ranges=ranges)
        yield output.apply(chunk)
