"""Check the package's import graph: no cycles and no upward imports.

    python tools/check_imports.py            # prints the graph's layers; exit 1 on a violation

Every ``import`` and ``from ... import`` in ``src/echo_embeddings`` counts, including those inside
functions and under ``TYPE_CHECKING``. An import is *upward* when a module imports a package that
contains it (``echo_embeddings`` itself, or its own subpackage's ``__init__``): modules import the
module that defines a name, never the re-exports above them. The engine imports neither
sentence-transformers, nor the training or serving code, nor anything of the package outside it.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "echo_embeddings"
ENGINE_MAY_NOT_IMPORT = ("sentence_transformers", "peft", "datasets", "ray", "fastapi")


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted name of every module in the package (a package is its ``__init__``)."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> list[str]:
    """Dotted names ``name`` imports, resolved to the package's modules where they are ours."""
    is_package = path.name == "__init__.py"
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                child = f"{module}.{alias.name}"
                found.append(child if child in known else module)
    return found


def check(root: Path = ROOT) -> list[str]:
    known = modules(root)
    graph = {name: sorted({i for i in imports(name, path, known) if i in known and i != name}) for name, path in known.items()}
    problems = []
    for name, targets in graph.items():
        for target in targets:
            if name.startswith(target + "."):
                problems.append(f"upward import: {name} imports {target}, a package that contains it")
        if name.startswith(f"{PACKAGE}.engine"):
            outside = [t for t in targets if not t.startswith(f"{PACKAGE}.engine")]
            third = [i for i in imports(name, known[name], known) if i.split(".")[0] in ENGINE_MAY_NOT_IMPORT]
            if outside or third:
                problems.append(f"the engine reaches outside it: {name} imports {outside + third}")
    problems.extend(f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph))
    return problems


def cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, []):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component) + [sorted(component)[0]])

    for node in graph:
        if node not in index:
            visit(node)
    return found


def main() -> int:
    problems = check()
    for problem in problems:
        print(problem)
    if not problems:
        print(f"{len(modules())} modules: no import cycle, no upward import, the engine imports only itself, torch and transformers")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
