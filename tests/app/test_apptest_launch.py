"""The Launch page through streamlit.testing.v1.AppTest: presets, plan preview, inline spec errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

MAIN = str(Path(__file__).resolve().parents[2] / "app" / "main.py")


@pytest.fixture()
def app(tmp_path, monkeypatch) -> AppTest:
    monkeypatch.setenv("GAMMA_LAB_DATA", str(tmp_path))
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def test_launch_shows_plan_for_demo_preset(app: AppTest):
    assert app.text_input(key="launch.name").value == "demo-mlp-mnist1d"
    check = next(b for b in app.button if b.label == "Check plan")
    check.click().run()
    assert not app.exception, app.exception
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Cells (γ × η × seed)"] == "12"
    assert int(metrics["Work units"]) >= 1


def test_launch_shows_errors_at_their_fields(app: AppTest):
    app.text_input(key="launch.grid.eta").set_value("0.1, lots")
    next(b for b in app.button if b.label == "Check plan").click().run()
    assert not app.exception, app.exception
    errors = [e.value for e in app.error]
    assert any("cannot read '0.1, lots'" in e for e in errors)
    app.text_input(key="launch.grid.eta").set_value("-1, 0.1")
    next(b for b in app.button if b.label == "Check plan").click().run()
    assert any("grid.eta" in e or "must be a finite number > 0" in e for e in [e.value for e in app.error])


@pytest.mark.parametrize("page", ["runs", "portrait", "trajectories", "overlays", "diagnostics", "compare"])
def test_every_page_renders_on_an_empty_store(app: AppTest, page: str):
    app.switch_page(f"views/{page}.py").run()
    assert not app.exception, app.exception
    assert any("No sweeps yet" in i.value for i in app.info)
