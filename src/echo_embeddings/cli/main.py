"""The ``echo-embeddings`` parser and its entry point: each command adds its own sub-parser and runs
it; a data error exits 2 with one line that names it."""

from __future__ import annotations

import argparse
import sys

from ..data import DataError
from . import embed, evaluate, serve, train, whitening

COMMANDS = {"embed": embed, "evaluate": evaluate, "fit-whitening": whitening, "serve": serve, "train": train}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="echo-embeddings", description="Sentence embeddings from causal LMs: echo, token prepending and baselines.")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        COMMANDS[args.command].run(args)
    except DataError as error:
        print(f"echo-embeddings: {error}", file=sys.stderr)
        return 2
    return 0

