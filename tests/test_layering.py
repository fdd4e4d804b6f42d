"""The package layering, enforced: engine imports none of the other packages; storage imports neither
tasks nor app; tasks does not import app. Every import counts, including those inside functions (a
late import is still a dependency), so a shortcut across a layer fails here, not in review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "storage", "tasks", "app")
# what each package must not import (the layers below it are allowed)
FORBIDDEN = {
    "engine": {"storage", "tasks", "app"},
    "storage": {"tasks", "app"},
    "tasks": {"app"},
    "app": set(),
}


def imported_packages(path: Path) -> dict[str, int]:
    """Top-level project packages a module imports -> the first line that does."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if top in PACKAGES:
                found.setdefault(top, node.lineno)
    return found


def violations(package: str) -> list[str]:
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for top, line in imported_packages(path).items():
            if top in FORBIDDEN[package]:
                out.append(f"{path.relative_to(ROOT)}:{line} imports {top}")
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_layering(package: str) -> None:
    assert violations(package) == []


def test_the_check_sees_late_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from tasks.api import submit\n    import app.cli\n")
    assert imported_packages(module) == {"tasks": 2, "app": 3}
