"""The engine's own import graph has no cycles: a module that imports another must not be imported by
it, directly or through others. Late imports (inside functions) count, as in test_layering.py: a
late import hides a cycle from the interpreter, not from a reader, who still cannot read one module
without the other."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def engine_imports(path: Path, modules: set[str]) -> set[str]:
    """The engine modules (dotted names among `modules`) that the module at `path` imports anywhere."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # from engine import metrics
    return found & modules


def import_graph(package: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports, for every module of the package directory."""
    paths = {f"{package.name}.{p.stem}": p for p in sorted(package.glob("*.py")) if p.stem != "__init__"}
    return {name: engine_imports(path, set(paths)) - {name} for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, …, a], or None when the graph is acyclic (depth-first, three colours)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_engine_modules_import_each_other_without_cycles() -> None:
    graph = import_graph(ROOT / "engine")
    assert "engine.models" in graph and graph["engine.models"]  # the check sees the engine's imports
    assert find_cycle(graph) is None


def test_the_check_sees_a_cycle_through_a_late_import(tmp_path: Path) -> None:
    package = tmp_path / "engine"
    package.mkdir()
    (package / "a.py").write_text("from engine.b import f\n")
    (package / "b.py").write_text("from engine import c\n")
    (package / "c.py").write_text("def g():\n    import engine.a\n")
    (package / "d.py").write_text("from engine.a import f\n")
    graph = import_graph(package)
    assert graph["engine.b"] == {"engine.c"}
    assert find_cycle(graph) == ["engine.a", "engine.b", "engine.c", "engine.a"]
    (package / "c.py").write_text("def g():\n    import math\n")
    assert find_cycle(import_graph(package)) is None
