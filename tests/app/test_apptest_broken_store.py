"""A corrupt registry or metric file: the dashboard names the file and what to do, no traceback page.

A user whose <data>/metrics.duckdb was junk saw "another process records (...)" in the sidebar and a
raw StoreCorrupt traceback on the Phase portrait page."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

MAIN = str(Path(__file__).resolve().parents[2] / "app" / "main.py")
JUNK = bytes(range(256)) * 20


@pytest.mark.parametrize("name", ["metrics.duckdb", "registry.sqlite"])
@pytest.mark.parametrize("page", ["launch", "runs", "portrait"])
def test_broken_file_is_named_on_every_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str,
                                            page: str) -> None:
    broken = tmp_path / name
    broken.write_bytes(JUNK)
    monkeypatch.setenv("GAMMA_LAB_DATA", str(tmp_path))
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.run()
    if page != "launch":
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception, at.exception
    errors = " ".join(e.value for e in at.error)
    assert str(broken.resolve()) in errors and "Move it aside" in errors
    assert broken.read_bytes() == JUNK  # nothing reset


def test_moved_aside_the_dashboard_starts_afresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "metrics.duckdb"
    broken.write_bytes(JUNK)
    monkeypatch.setenv("GAMMA_LAB_DATA", str(tmp_path))
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.run()
    assert at.error
    broken.rename(tmp_path / "metrics.duckdb.broken")
    at.run()  # a reload: the failure was not cached
    assert not at.exception and not at.error
    assert "recording in this dashboard" in " ".join(c.value for c in at.sidebar.caption)
