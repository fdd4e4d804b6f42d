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
    assert app.text_input(key="launch.name").value == "quick-demo-mlp-mnist1d"
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


def test_launch_submits_and_links_to_the_sweep(app: AppTest, tmp_path):
    """Launch stores the sweep and its runs in the registry and links to the sweep's portrait.
    A one-cell, few-step spec keeps the local worker that trains it short-lived."""
    import time

    from storage.registry import Registry
    from storage.settings import load_settings
    from tasks import api

    for key, value in (("name", "apptest-launch"), ("model.width", 4), ("train.steps", 5),
                       ("train.eval_points", 2), ("grid.gamma", "1"), ("grid.eta", "0.1"), ("grid.seeds", "0")):
        widget = app.text_input(key=f"launch.{key}") if isinstance(value, str) else app.number_input(
            key=f"launch.{key}")
        widget.set_value(value)
    app.multiselect(key="launch.train.metrics").set_value(["test"])
    next(b for b in app.button if b.label == "Launch").click().run()
    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]

    settings = load_settings(data_dir=tmp_path)
    sweeps = Registry(settings.registry_url).list_sweeps()
    assert [s["name"] for s in sweeps] == ["apptest-launch"]
    sweep_id = sweeps[0]["id"]
    runs = Registry(settings.registry_url).list_runs(sweep_id)
    assert [(r["gamma"], r["eta"], r["seed"], r["config"]["model"]["width"]) for r in runs] == [(1.0, 0.1, 0, 4)]
    # Launch goes straight to that sweep's portrait, which says what was launched
    assert any(f"Launched sweep {sweep_id}" in s.value for s in app.success)
    assert app.selectbox(key="portrait.sweep").value == sweep_id
    deadline = time.monotonic() + 120  # let the worker finish inside tmp_path (not an assertion on time)
    while not api.is_settled(settings, sweep_id) and time.monotonic() < deadline:
        time.sleep(0.5)


def test_launch_names_every_bad_field_at_once(app: AppTest, tmp_path):
    """An η list the form cannot read used to hide the other fields' problems: only after fixing it
    did the user learn that γ = -1 is refused. Now both show at once, and nothing is queued."""
    from storage.registry import Registry
    from storage.settings import load_settings

    app.text_input(key="launch.grid.gamma").set_value("-1, 0.1")
    app.text_input(key="launch.grid.eta").set_value("")
    app.text_input(key="launch.grid.seeds").set_value("0, x")
    next(b for b in app.button if b.label == "Launch").click().run()
    assert not app.exception, app.exception
    errors = [e.value for e in app.error]
    assert any("must not be empty" in e for e in errors), errors  # grid.eta
    assert any("must be a finite number > 0 (got -1" in e for e in errors), errors  # grid.gamma
    assert any("cannot read '0, x'" in e for e in errors), errors  # grid.seeds
    assert len(errors) == 3, errors  # no complaint about the stand-ins used for the unreadable fields
    assert Registry(load_settings(data_dir=tmp_path).registry_url).list_sweeps() == []
