"""The documentation works as pasted: every Python snippet and every command of the README and of
``docs/`` runs from a fresh clone, and the site builds with ``mkdocs build --strict``.

A fenced block is run unless the line before it is ``<!-- not run: REASON -->``; the reason shows
in the page source, so nothing is skipped silently. Python blocks of one page run in order in one
interpreter (later blocks may use earlier names); ``bash`` blocks run each ``echo-embeddings`` and
``python examples/...`` command; ``pip install`` lines are what the test command itself did. Both
run in a temporary folder where ``examples/`` is the repository's, so outputs land there.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if "generated" not in p.parts and not p.name.startswith("."))]
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[a-z]*)\s*$")
SKIP = re.compile(r"<!--\s*not run:\s*(?P<reason>.+?)\s*-->")
RUNNABLE = ("echo-embeddings ", "python examples/")


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    code: str
    skip: str | None


def blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").split("\n")
    out, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match or not match.group("lang"):
            i += 1
            continue
        indent, start = len(match.group("indent")), i
        previous = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        skip = SKIP.search(previous)
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:])
            i += 1
        out.append(Block(page, start + 1, match.group("lang"), "\n".join(body), skip.group("reason") if skip else None))
        i += 1
    return out


def commands(code: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, comments and blank lines dropped."""
    joined = code.replace("\\\n", " ")
    out = []
    for line in joined.split("\n"):
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def workdir(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    env.pop("PYTHONPATH", None)
    return env


PYTHON_PAGES = [p for p in PAGES if any(b.lang == "python" and b.skip is None for b in blocks(p))]
SHELL_PAGES = [p for p in PAGES if any(b.lang == "bash" and b.skip is None for b in blocks(p))]


def test_every_block_is_run_or_says_why_not() -> None:
    for page in PAGES:
        for block in blocks(page):
            if block.skip is not None or block.lang not in ("bash", "sh"):
                continue
            for command in commands(block.code):
                assert command.startswith((*RUNNABLE, "pip install")), (
                    f"{name(page)}:{block.line}: {command!r} is not run by the tests; run it or mark the block <!-- not run: why -->"
                )
    assert PYTHON_PAGES and SHELL_PAGES


@pytest.mark.real
@pytest.mark.parametrize("page", PYTHON_PAGES, ids=name)
def test_python_snippets_run_as_pasted(page: Path, tmp_path: Path) -> None:
    env = workdir(tmp_path)
    code = "\n\n".join(f"# {name(page)}:{b.line}\n{b.code}" for b in blocks(page) if b.lang == "python" and b.skip is None)
    (tmp_path / "snippets.py").write_text(code, encoding="utf-8")
    done = subprocess.run([sys.executable, "snippets.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{name(page)}'s snippets failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


@pytest.mark.real
@pytest.mark.parametrize("page", SHELL_PAGES, ids=name)
def test_shell_commands_run_as_pasted(page: Path, tmp_path: Path) -> None:
    env = workdir(tmp_path)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for block in blocks(page):
        if block.lang not in ("bash", "sh") or block.skip is not None:
            continue
        for command in commands(block.code):
            if command.startswith("pip install"):
                continue
            if command.startswith("python "):
                command = shlex.quote(sys.executable) + command[len("python"):]
            done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
            assert done.returncode == 0, f"{name(page)}:{block.line}: {command}\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


def test_the_results_pages_match_the_benchmarks_json() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "render_results.py"), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    assert (tmp_path / "site" / "concepts" / "architecture" / "index.html").is_file()
