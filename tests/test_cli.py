"""The CLI as a tool used all day: help and argument errors answer without loading torch, mistakes
are reported before any weights load, every option says what it does, and ``embed`` offers
sentence-transformers' precisions and truncation."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import save_tiny_model

import echo_embeddings
from echo_embeddings import cli

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ["embed", "evaluate", "fit-whitening", "serve", "train"]


def test_help_and_argument_errors_do_not_import_torch() -> None:
    script = (
        "import sys\n"
        "from echo_embeddings.cli import main\n"
        f"for argv in [['--help'], *[[c, '--help'] for c in {COMMANDS!r}], ['embed'], ['nope']]:\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers', 'sklearn', 'scipy') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_every_option_has_help() -> None:
    missing = []
    commands = next(a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        missing += [f"{name} {a.option_strings or a.dest}" for a in sub._actions if not a.help and a.dest != "help"]
    assert missing == []


@pytest.fixture
def never_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("echo_embeddings.api.load", lambda *a, **k: pytest.fail("weights were loaded"))


def test_mistakes_are_reported_before_any_weights_load(tmp_path: Path, never_load, capsys: pytest.CaptureFixture) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("one\ntwo\n")
    out = str(tmp_path / "v.npy")
    assert cli.main(["embed", str(texts), "--out", out, "--model", "smollm-135m"]) == 2
    assert "did you mean 'smollm2-135m'" in capsys.readouterr().err
    assert cli.main(["embed", str(texts), "--out", out, "--strategy", "ecko"]) == 2
    assert "--strategy" in (err := capsys.readouterr().err) and "echo" in err
    assert cli.main(["embed", str(texts), "--out", out, "--model", str(tmp_path / "nope.gguf")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert cli.main(["embed", str(texts), "--out", str(tmp_path / "missing" / "v.npy")]) == 2
    assert "does not exist; create it first" in capsys.readouterr().err
    assert cli.main(["evaluate", "--model", "gemma-270m", "--sts", str(ROOT / "examples/data/sts_pairs.tsv")]) == 2
    assert "did you mean 'gemma3-270m'" in capsys.readouterr().err
    assert cli.main(["train", str(ROOT / "tests/data/triples.tsv"), "--strategy", "ecko", "--out", str(tmp_path / "o")]) == 2
    assert "--strategy" in capsys.readouterr().err
    assert cli.main(["serve", "--run-seconds", "0"]) == 2
    assert "--run-seconds must be positive, got 0.0" in capsys.readouterr().err


def test_train_reads_a_triplet_file_with_its_own_column_names(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = str(save_tiny_model(tmp_path / "base"))
    argv = ["train", str(ROOT / "tests/data/triples.tsv"), "--model", base, "--out", str(tmp_path / "out"), "--max-steps", "1", "--batch-size", "2"]
    assert cli.main(argv) == 0
    assert "triplets from" in (err := capsys.readouterr().err) and "(columns anchor, paraphrase, unrelated)" in err
    four = tmp_path / "four.tsv"
    four.write_text("a\tb\tc\td\nw\tx\ty\tz\n")
    assert cli.main(["train", str(four), "--out", str(tmp_path / "never")]) == 2
    assert "--text-columns a,b,c" in capsys.readouterr().err


def test_embed_precision_truncation_and_blank_lines(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from sentence_transformers.util.quantization import quantize_embeddings

    folder = str(save_tiny_model(tmp_path / "tiny"))
    lines = ["A dog runs.", "", "Cats sleep all day.", "Rain is coming.", "   ", "The market fell."]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n")
    model = echo_embeddings.load(folder, "echo", device="cpu")
    full = model.encode(lines, normalize_embeddings=True)
    base = ["embed", str(corpus), "--model", folder, "--normalize", "--chunk-size", "3"]

    assert cli.main([*base, "--out", str(tmp_path / "f.npy")]) == 0
    assert "wrote 6 x 32 float32" in (out := capsys.readouterr().out) and "2 blank lines embedded as empty texts" in out
    assert np.abs(np.load(tmp_path / "f.npy") - full).max() < 1e-5

    assert cli.main([*base, "--out", str(tmp_path / "i8.npy"), "--precision", "int8"]) == 0
    ranges = np.vstack([full[:3].min(axis=0), full[:3].max(axis=0)])  # calibrated on the first chunk, then kept
    stored = np.load(tmp_path / "i8.npy")
    assert stored.dtype == np.int8 and np.abs(stored.astype(int) - quantize_embeddings(full, "int8", ranges=ranges).astype(int)).max() <= 1

    assert cli.main([*base, "--out", str(tmp_path / "b.npy"), "--precision", "ubinary"]) == 0
    packed = np.load(tmp_path / "b.npy")
    assert packed.dtype == np.uint8 and packed.shape == (6, 4) and (packed == quantize_embeddings(full, "ubinary")).all()

    capsys.readouterr()
    assert cli.main([*base, "--out", str(tmp_path / "t.npy"), "--truncate-dim", "8"]) == 0
    assert np.load(tmp_path / "t.npy").shape == (6, 8)
    assert "cannot be cut to 8 without losing quality" in capsys.readouterr().err


def test_evaluate_loads_each_model_once_and_reports_each_warning_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import echo_embeddings.api

    folder = str(save_tiny_model(tmp_path / "tiny"))
    loads = []
    real = echo_embeddings.api.load
    monkeypatch.setattr(echo_embeddings.api, "load", lambda *a, **k: loads.append(a) or real(*a, **k))
    cls = tmp_path / "intents.csv"
    cls.write_text("text,label\n" + "\n".join(f"{w} number {i},{w}" for i in range(6) for w in ("card", "loan", "fee")))
    sts = ROOT / "examples/data/sts_pairs.tsv"
    argv = ["evaluate", "--model", folder, "--strategy", "mean,echo", "--sts", str(sts), "--classification", str(cls), "--out", str(tmp_path / "a")]
    assert cli.main(argv) == 0
    assert len(loads) == 1
    err = capsys.readouterr().err
    assert all(err.count(line) == 1 for line in err.splitlines() if line.startswith("warning"))
    # the reconfigured model scores exactly as a fresh load of that strategy
    assert cli.main([*argv[:4], "echo", *argv[5:-1], str(tmp_path / "b")]) == 0
    a = (tmp_path / "a" / "results.json").read_text()
    b = (tmp_path / "b" / "results.json").read_text()
    import json

    assert json.loads(a)["results"][f"{folder}/echo"] == json.loads(b)["results"][f"{folder}/echo"]
