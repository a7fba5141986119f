"""Render the benchmarks' saved JSON (``benchmarks/results/*.json``) into the documentation's tables
(``docs/generated/*.md``, included by the results pages) and charts (``docs/img/results-*.svg``),
so that a number on a page cannot drift from the data behind it.

    python benchmarks/render_results.py            # write the tables and charts
    python benchmarks/render_results.py --check    # exit 1 if any of them is out of date (a test runs this)

A results file holds ``columns`` and ``rows`` (each row a ``label`` and one cell per column:
``value``, its printed ``decimals``, and a bootstrap interval ``low`` / ``high`` where one was
measured), the ``command`` that measured it, its ``unit`` and, for quality tables, the
``reference`` row (all-MiniLM-L6-v2, the trained encoder), drawn as a line in the charts.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TABLES = ROOT / "docs" / "generated"
IMAGES = ROOT / "docs" / "img"
CHARTS = {
    # results file: (columns to draw, higher is better)
    "zero_shot_smollm2": (["STS-B dev + SICK trial", "SciFact"], True),
    "zero_shot_gemma3": (["STS-B dev + SICK trial", "SciFact"], True),
    "fine_tuned_smollm2": (["STS-B dev", "SICK trial", "SciFact", "Banking77"], True),
    "fine_tuned_gemma3": (["STS-B dev", "SICK trial"], True),
    "late_chunking": (["SmolLM2-135M, 300 abstracts", "Gemma 3 270M, 200 abstracts"], True),
    "engine_speed": (["time vs (a)"], False),
    "serve_load": (["vs offline encode", "lock per call vs offline"], True),
    "truncation_quality": (["STS-B dev", "SICK trial"], True),
    "cpu_precision": (["speed vs fp32"], True),
    "big_models": (["load peak / weights"], False),
    "mteb_instructions": (["mean"], True),
}
NO_BOLD = {"serve_load", "engine_speed", "cpu_precision", "big_models", "generated_queries", "generated_queries_other_tasks", "generated_queries_whole_corpus", "generated_queries_combinations", "generated_queries_models", "generated_queries_variants"}
"""Tables whose columns mix directions (rates and latencies): no best value is marked."""


def cell_text(cell: dict | None, bold: bool = False) -> str:
    if cell is None:
        return ""
    value = f"{cell['value']:.{cell['decimals']}f}"
    value = f"**{value}**" if bold else value
    if "low" in cell:
        return f"{value} [{cell['low']:.{cell['decimals']}f}, {cell['high']:.{cell['decimals']}f}]"
    return value


def table(result: dict, higher_is_better: bool, bold: bool = True) -> str:
    """A markdown table; in quality tables the best value of each column (the reference row aside) is bold."""
    columns, rows = result["columns"], result["rows"]
    best: dict[int, float] = {}
    if result.get("reference") and higher_is_better and bold:
        for j in range(len(columns)):
            values = [r["cells"][j]["value"] for r in rows if r["label"] != result["reference"] and r["cells"][j] is not None]
            if values:
                best[j] = max(values)
    lines = [
        f"| {result['row_header']} | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for row in rows:
        cells = [cell_text(c, bold=c is not None and best.get(j) == c["value"]) for j, c in enumerate(row["cells"])]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    note = f"\n\n*{result['unit']}. Measured with* `{result['command']}`*.*" if result.get("unit") else f"\n\n*Measured with* `{result['command']}`*.*"
    return "\n".join(lines) + note + "\n"


def chart(name: str, result: dict, columns: list[str], higher_is_better: bool) -> str:
    """A horizontal bar chart of ``columns`` per row, the reference row as a dashed line; SVG text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = name  # stable ids: the same data gives the same file
    plt.rcParams["svg.fonttype"] = "none"  # text stays text: small files, and the browser renders it
    rows = [r for r in result["rows"] if r["label"] != result.get("reference")]
    reference = next((r for r in result["rows"] if r["label"] == result.get("reference")), None)
    index = [result["columns"].index(c) for c in columns]
    height = 0.8 / len(columns)
    figure, axes = plt.subplots(figsize=(8, 0.42 * len(rows) * max(1, len(columns) / 1.6) + 1.2))
    for k, (column, j) in enumerate(zip(columns, index)):
        values = [r["cells"][j]["value"] if r["cells"][j] is not None else 0.0 for r in rows]
        positions = [i + k * height - 0.4 + height / 2 for i in range(len(rows))]
        bars = axes.barh(positions, values, height, label=column)
        if reference is not None and reference["cells"][j] is not None:
            axes.axvline(reference["cells"][j]["value"], color=bars.patches[0].get_facecolor(), linestyle="--", linewidth=1)
    axes.set_yticks(range(len(rows)), [r["label"].replace("`", "") for r in rows], fontsize=8)
    axes.invert_yaxis()
    label = f"dashed: {result['reference']}" if reference is not None else ""
    axes.set_xlabel(("higher is better" if higher_is_better else "lower is better") + (f"; {label}" if label else ""), fontsize=8)
    axes.set_title(result["title"], fontsize=10)
    axes.legend(fontsize=8, loc="lower right")
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    plt.close(figure)
    return buffer.getvalue()


def outputs() -> dict[Path, str]:
    """Every file this script writes, with its content."""
    out: dict[Path, str] = {}
    for path in sorted(RESULTS.glob("*.json")):
        name = path.stem
        result = json.loads(path.read_text(encoding="utf-8"))
        columns, higher = CHARTS.get(name, (result["columns"][:1], True))
        out[TABLES / f"{name}.md"] = table(result, higher, bold=name not in NO_BOLD)
        out[IMAGES / f"results-{name}.svg"] = chart(name, result, columns, higher)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a table or chart differs from what the JSON gives")
    args = parser.parse_args()
    stale = []
    for path, text in outputs().items():
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("out of date (run python benchmarks/render_results.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
