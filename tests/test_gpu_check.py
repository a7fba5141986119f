"""The GPU check script (benchmarks/gpu_check.py) works before a GPU is there: its dry run takes
every step tiny on the CPU, so the first CUDA machine runs a script that is known to work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.real
def test_the_gpu_check_runs_every_step_in_its_dry_run(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--folder", str(tmp_path / "checkpoints"), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    steps = json.loads(out.read_text())["steps"]
    assert {name: step["status"] for name, step in steps.items()} == {
        "engine_speed": "ok", "7b": "ok", "bnb4": "skipped", "oom": "skipped", "train": "ok"
    }
    assert steps["engine_speed"]["b_over_c"] > 0 and "prefix_cache" in steps["engine_speed"]["fast_paths"]
    shape = steps["7b"]
    assert shape["parameters"] > 0 and shape["texts_per_s"] > 0 and shape["load_peak_mib"] > 0
    assert steps["oom"]["vectors"] == [64, 64]
    assert steps["train"]["last_line"].startswith("saved ")
