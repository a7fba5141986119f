"""``echo-embeddings fit-whitening``: fit a whitening module on an unlabelled corpus and save the
model with it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..data import DataError, read_texts
from ..engine.inputs import normalize_task
from .common import add_device, load_model


def add_parser(commands: Any) -> None:
    whiten = commands.add_parser("fit-whitening", help="fit whitening on an unlabelled corpus and save the model with it")
    whiten.add_argument("corpus", help="text file (one text per line) or a TSV/CSV with --column; no labels are used")
    whiten.add_argument("--model", default=None, help="alias, id, folder, .gguf or saved echo model (default: the embedded smollm2-135m)")
    whiten.add_argument("--strategy", default=None, help="preset or template (default: echo, or a saved model's own)")
    whiten.add_argument("--out", required=True, help="folder to save the model with its whitening module")
    whiten.add_argument("--dim", type=int, default=None, help="kept dimensions (default: 128, or the embedding size if smaller)")
    whiten.add_argument("--kind", choices=["pca", "center"], default="pca", help="PCA whitening or centering only (default: %(default)s)")
    whiten.add_argument("--column", default=None, help="read this column of a TSV/CSV with a header")
    whiten.add_argument("--task", choices=["sentence", "query", "document"], default="sentence", help="template the corpus is embedded with (default: %(default)s)")
    add_device(whiten, quantize=False)


def run(args: argparse.Namespace) -> None:
    if not Path(args.corpus).is_file():
        raise DataError(f"no such file: {args.corpus}")
    from ..models.whitening import fit_whitening

    model = load_model(args.model, args.strategy, args.device, args.dtype)
    texts = (t for t in read_texts(args.corpus, args.column) if t.strip())
    try:
        fit_whitening(model, texts, args.dim, kind=args.kind, task=normalize_task(args.task), show_progress_bar=True)
    except ValueError as error:
        raise DataError(str(error)) from error
    model.save(args.out)
    print(f"saved {args.out}: {model[-1]}")
