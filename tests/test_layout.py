"""The layout issue 24 asks for: no import circles among the project's modules, and a driver
that only orders the stages. Imports are read from the source (ast), not executed, so an
import inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("handreid", "search", "analysis", "bench")


def modules(root: Path = ROOT) -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports: each imported name resolved to the longest
    known module that prefixes it (``from a.b import c`` gives a.b.c if it is a module,
    else a.b)."""
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".")[: -node.level if path.stem != "__init__" else None]
                if path.stem == "__init__" and node.level > 1:
                    package = package[: 1 - node.level]
                base = ".".join([*package, *([node.module] if node.module else [])])
            names = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for full in names:
            parts = full.split(".")
            for i in range(len(parts), 0, -1):
                candidate = ".".join(parts[:i])
                if candidate in known:
                    if candidate != name:
                        targets.add(candidate)
                    break
    return targets


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    known = modules(root)
    return {name: imported(name, path, known) for name, path in known.items()}


def test_the_project_has_no_import_circles():
    graph = import_graph()
    assert "search.driver" in graph and "search.confirm" in graph["search.driver"]
    assert cycles(graph) == []


def test_a_circle_is_found(tmp_path):
    """The check itself: two modules importing each other, one inside a function."""
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "__init__.py").write_text("")
    (tmp_path / "search" / "a.py").write_text("from search.b import f\n")
    (tmp_path / "search" / "b.py").write_text("def f():\n    from . import a\n")
    for package in PACKAGES[:1] + PACKAGES[2:]:
        (tmp_path / package).mkdir()
    assert cycles(import_graph(tmp_path)) == [["search.a", "search.b"]]


def test_the_driver_only_orders_the_stages():
    assert len((ROOT / "search" / "driver.py").read_text().splitlines()) <= 250
