"""Every page through AppTest against a store filled by a real tiny sweep (`gamma-lab demo`:
local workers train it, the recorder ingests the points). Widgets must change the figures' data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from app.logic.portrait import cell_key, parse_cell

from .plotly_json import arr

MAIN = str(Path(__file__).resolve().parents[2] / "app" / "main.py")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("seeded")
    env = {**os.environ, "GAMMA_LAB_DATA": str(path)}
    done = subprocess.run([sys.executable, "-m", "app.cli", "demo"], env=env, capture_output=True, text=True,
                          timeout=500, cwd=Path(MAIN).parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    return path


@pytest.fixture()
def app(data_dir, monkeypatch) -> AppTest:
    monkeypatch.setenv("GAMMA_LAB_DATA", str(data_dir))
    at = AppTest.from_file(MAIN, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def figures(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


@pytest.mark.parametrize("page", ["runs", "portrait", "trajectories", "overlays", "diagnostics", "compare"])
def test_page_renders_with_data(app: AppTest, page: str):
    app.switch_page(f"views/{page}.py").run()
    assert not app.exception, app.exception
    if page != "runs":
        assert figures(app) and any(f["data"] for f in figures(app))


def test_portrait_metric_changes_heatmap(app: AppTest):
    app.switch_page("views/portrait.py").run()
    app.toggle(key="portrait.live").set_value(False).run()
    before = arr(figures(app)[0]["data"][0]["z"])
    assert np.isfinite(before).any()
    app.selectbox(key="portrait.stat").set_value("best").run()
    after = arr(figures(app)[0]["data"][0]["z"])
    assert not app.exception
    assert np.nanmax(after - before) <= 1e-12 and not np.allclose(after, before, equal_nan=True)


def test_trajectories_colour_by_changes_traces(app: AppTest):
    app.switch_page("views/trajectories.py").run()
    names = [t["name"] for t in figures(app)[0]["data"]]
    assert names and all(n.startswith("η=") or n == "diverged" for n in names)
    app.radio(key="traj.colour").set_value("gamma").run()
    names = [t["name"] for t in figures(app)[0]["data"]]
    assert any(n.startswith("γ=") for n in names)


def test_portrait_cell_selection_opens_its_trajectories(app: AppTest, data_dir: Path):
    """Choosing a cell (the selectbox a click in the portrait fills) links to that cell's
    trajectories; following the link's query string shows exactly that run's series."""
    from storage import queries
    from storage.registry import Registry
    from storage.settings import load_settings

    app.switch_page("views/portrait.py").run()
    app.toggle(key="portrait.live").set_value(False).run()
    cell = app.selectbox(key="portrait.cell")
    cell.select_index(len(cell.options) - 1).run()  # the largest (γ, η) of the grid
    assert not app.exception, app.exception
    gamma, eta = parse_cell(app.selectbox(key="portrait.cell").value)
    assert app.query_params["cell"] == cell_key(gamma, eta)  # the selected cell is in the URL
    links = [p for p in app.get("page_link") if p.proto.label == "Open this cell's trajectories"]
    assert len(links) == 1 and links[0].proto.page.endswith("trajectories")
    query = dict(part.split("=", 1) for part in links[0].proto.query_string.split("&"))
    assert query["mode"] == "cell" and float(query["gamma"]) == gamma and float(query["eta"]) == eta

    # a copied portrait link reopens with the same cell selected
    shared = AppTest.from_file(MAIN, default_timeout=120)
    shared.query_params.update({"sweep": query["sweep"], "live": "0", "cell": cell_key(gamma, eta)})
    shared.run()
    shared.switch_page("views/portrait.py").run()
    assert not shared.exception, shared.exception
    assert shared.selectbox(key="portrait.cell").value == cell_key(gamma, eta)

    sweep_id = query["sweep"]
    settings = load_settings(data_dir=data_dir)
    runs = Registry(settings.registry_url).list_runs(sweep_id, gamma=gamma, eta=eta)
    assert len(runs) == 1
    fresh = AppTest.from_file(MAIN, default_timeout=120)
    fresh.query_params.update(query)
    fresh.run()
    fresh.switch_page("views/trajectories.py").run()
    assert not fresh.exception, fresh.exception
    assert fresh.selectbox(key="traj.mode").value == "cell"
    traces = [t for t in figures(fresh)[0]["data"] if t["name"] != "diverged"]
    assert len(traces) == 1 and traces[0]["name"] == f"η={eta:.3g}"
    expected = queries.trajectories(settings, [runs[0]["run_id"]], metric="train_loss")
    expected = expected[(expected["kind"] != "diverged") & (expected["value"] > 0)]
    y = arr(traces[0]["y"])
    np.testing.assert_allclose(y[np.isfinite(y)], expected["value"].to_numpy())


def test_overlay_rescaling_equals_storage_overlay(data_dir: Path):
    """The overlays page derives every named time variable from one x = t query: it must equal
    storage's own overlay for each variable."""
    from app.logic.overlays import TIME_VARIABLES, rescale_time
    from app.logic.source import DashboardSource
    from storage.settings import load_settings

    source = DashboardSource(load_settings(data_dir=data_dir))
    runs = source.runs(source.sweeps()["sweep_id"].iloc[0])
    ids = runs["run_id"].tolist()
    frame_t = source.overlay(ids, x="t")
    depth = runs.set_index("run_id")["depth"]
    for key in TIME_VARIABLES:
        ours = rescale_time(frame_t, depth, key)
        theirs = source.overlay(ids, x=key)
        assert ours["run_id"].tolist() == theirs["run_id"].tolist()
        np.testing.assert_allclose(ours["x"].to_numpy(float), theirs["x"].to_numpy(float), rtol=1e-12)


@pytest.mark.parametrize("max_points, log_x", [(300, True), (20, False)])
def test_trajectories_multi_equals_one_query_per_metric(data_dir: Path, max_points: int, log_x: bool):
    """storage.queries_multi gives, metric by metric, exactly storage.queries.trajectories' rows."""
    from storage import queries
    from storage.queries_multi import trajectories_multi
    from storage.registry import Registry
    from storage.settings import load_settings

    settings = load_settings(data_dir=data_dir)
    registry = Registry(settings.registry_url)
    sweep_id = registry.list_sweeps()[0]["id"]
    ids = [r["run_id"] for r in registry.list_runs(sweep_id)][::-1]  # an order the store does not have
    # the demo logs train_loss every step and test_loss/test_acc on the eval schedule only
    metrics = ["test_loss", "train_loss", "sharpness", "test_acc", "movement_l1", "no_such"]
    multi = trajectories_multi(settings, ids, metrics, max_points=max_points, log_x=log_x)
    present = multi["metric"].drop_duplicates().tolist()
    assert present == [m for m in metrics if m in present]  # metrics in the order asked
    for metric in metrics:
        one = queries.trajectories(settings, ids, metric=metric, max_points=max_points, log_x=log_x)
        ours = multi[multi["metric"] == metric].drop(columns="metric").reset_index(drop=True)
        pd.testing.assert_frame_equal(ours, one.reset_index(drop=True), check_dtype=False)
    assert (multi["kind"] == "diverged").any()  # the demo has diverged runs: their marks come through


def test_diagnostics_reads_every_curve_in_one_query(data_dir: Path, monkeypatch):
    """The Diagnostics page used to ask storage once per metric (loss, alignment, sharpness and each
    layer's movement: six queries for an L=3 net); now it asks once."""
    import streamlit as st

    from storage import queries, queries_multi

    calls: list[str] = []
    for module, name in ((queries, "trajectories"), (queries_multi, "trajectories_multi")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    monkeypatch.setenv("GAMMA_LAB_DATA", str(data_dir))
    st.cache_resource.clear()  # a fresh DashboardSource: nothing served from an earlier test's cache
    at = AppTest.from_file(MAIN, default_timeout=120)
    at.run()
    at.switch_page("views/diagnostics.py").run()
    assert not at.exception, at.exception
    assert calls == ["trajectories_multi"]
    figs = figures(at)
    # the demo logs no alignment/sharpness/movement: the loss chart only, and a note instead of blank charts
    assert len(figs) == 1 and figs[0]["data"]
    assert any("did not record" in w.value for w in at.warning)


@pytest.mark.parametrize("page", ["portrait", "trajectories", "overlays", "diagnostics", "compare"])
def test_loss_pages_state_the_loss_convention(app: AppTest, page: str):
    """Where a loss is drawn the page says how it is normalized (the demo: MLP on mnist1d, 10 outputs)
    and the factor to the paper's code, which sums the squared error over the outputs."""
    app.switch_page(f"views/{page}.py").run()
    captions = [c.value for c in app.caption]
    assert any("mean over batch × 10 outputs" in c and "multiply by 10" in c for c in captions), captions


def test_trajectories_of_accuracy_state_no_loss_convention(app: AppTest):
    app.switch_page("views/trajectories.py").run()
    app.selectbox(key="traj.metric").set_value("test_acc").run()
    assert not app.exception
    assert not any(c.value.startswith("Loss:") for c in app.caption)
