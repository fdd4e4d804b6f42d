"""Polish from a researcher's acceptance pass: hover numbers without trailing zeros, readable
alignment ticks, the selected portrait cell outlined, the pickers' labels."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from app.logic.figures import Curve, portrait_figure, trajectories_figure
from app.logic.grid import heatmap_grid, log_cell_edges
from app.logic.portrait import STATS, cell_key
from engine.config import ModelConfig, RunConfig
from storage.bus import open_publisher
from storage.recorder import Recorder
from storage.registry import Registry
from storage.settings import load_settings


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "gamma": [0.1, 0.1, 1.0, 1.0],
            "eta": [0.1, 1.0, 0.1, 1.0],
            "value": [0.05, 0.1, 0.02, 0.01],
            "n_seeds": 1,
            "n_done": 1,
            "n_diverged": 0,
            "n_running": 0,
            "n_missing": 0,
            "cell_status": "ok",
        }
    )


def _d3_formats(template: str) -> list[str]:
    """The d3 number formats of a plotly hovertemplate: '%{customdata[0]:~.3g}' -> '~.3g'."""
    return re.findall(r"%\{[^}:]+:([^}]+)\}", template)


def test_hovers_trim_trailing_zeros_of_gamma_and_eta():
    """d3's '.3g' keeps trailing zeros: the portrait's hover read 'γ=1.00'; '~.3g' reads 'γ=1'."""
    curve = Curve("η* ridge", np.array([0.1, 1.0]), np.array([0.1, 1.0]))
    fig = portrait_figure(heatmap_grid(_frame()), value_label="loss", curves=[curve]).to_plotly_json()
    runs = pd.DataFrame({"run_id": ["a"], "gamma": [1.0], "eta": [0.1], "seed": [0]})
    series = pd.DataFrame({"run_id": ["a"] * 2, "x": [1.0, 10.0], "value": [0.1, 0.01], "kind": "point"})
    traj = trajectories_figure(series, runs).to_plotly_json()
    templates = [t["hovertemplate"] for t in fig["data"] + traj["data"] if t.get("hovertemplate")]
    cells = next(t["hovertemplate"] for t in fig["data"] if t.get("name") == "cells")
    ridge = next(t["hovertemplate"] for t in fig["data"] if t.get("name") == "η* ridge")
    for template in (cells, ridge):
        assert re.search(r"γ=%\{customdata\[0\]:~\.3g\}", template), template
        assert re.search(r"η=%\{customdata\[1\]:~\.3g\}", template), template
    formats = [f for t in templates for f in _d3_formats(t)]
    assert formats and all(f.startswith("~") for f in formats), formats


def test_alignment_axis_has_round_ticks_over_zero_to_one():
    """The right (alignment) axis of the twin-axes figure read 0.4064, 0.4381, ...: plotly's default
    for an overlaying axis syncs its ticks to the left log axis's gridlines."""
    from app.logic.figures import twin_axes_figure

    loss = pd.DataFrame({"run_id": ["a"] * 3, "x": [1.0, 10.0, 100.0], "value": [0.1, 0.05, 0.01]})
    align = pd.DataFrame({"run_id": ["a"] * 3, "x": [1.0, 10.0, 100.0], "value": [0.41, 0.45, 0.52]})
    layout = twin_axes_figure(loss, align, left_label="train_loss", right_label="alignment").to_plotly_json()["layout"]
    right = layout["yaxis2"]
    assert right["overlaying"] == "y" and right["type"] == "linear"
    assert right["tickmode"] == "linear" and right["tick0"] == 0.0 and right["dtick"] == 0.2
    lo, hi = right["range"]
    assert -0.05 < lo < 0.0 and 1.0 < hi < 1.05  # [0, 1] with room for a marker at either end
    assert layout["yaxis"]["type"] == "log"  # the loss keeps its log axis
    free = twin_axes_figure(loss, align, left_label="l", right_label="r", right_range=None).to_plotly_json()
    assert free["layout"]["yaxis2"]["tickmode"] == "auto"  # never plotly's implicit "sync"


# ----------------------------------------------------------------------------- pages (AppTest)

MAIN = str(Path(__file__).resolve().parents[2] / "app" / "main.py")
GAMMAS, ETAS = (0.1, 1.0, 10.0), (0.01, 0.1)


@pytest.fixture()
def finished_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A finished 3 γ × 2 η sweep, one seed, written through the bus and the recorder (no training)."""
    settings = load_settings(data_dir=tmp_path / "data")
    settings.ensure_dirs()
    configs = [RunConfig(model=ModelConfig(width=8, depth=3), gamma=g, eta=e, seed=0) for g in GAMMAS for e in ETAS]
    reg = Registry(settings.registry_url)
    sweep_id = reg.create_sweep("polish", "t", {"train": {"steps": 100}, "model": {"depth": 3}})
    reg.add_runs(sweep_id, configs)
    pub = open_publisher(settings)
    steps = np.arange(100)
    for i, c in enumerate(configs):
        pub.started(c.run_id, 0, "w")
        pub.points(c.run_id, 0, steps, ["train_loss"] * 100, np.exp(-steps / (20.0 + i)))
        pub.finished(c.run_id, 0, "done", steps_done=100)
    with Recorder(settings) as rec:
        rec.drain()
    pub.close()
    monkeypatch.setenv("GAMMA_LAB_DATA", str(settings.data_dir))
    return sweep_id


def _figure(at: AppTest, index: int = 0) -> dict:
    return json.loads(at.get("plotly_chart")[index].proto.spec)


def _outlines(fig: dict) -> list[dict]:
    return [s for s in fig["layout"].get("shapes", []) if s.get("name") == "selected cell"]


def test_portrait_outlines_the_selected_cell_and_shows_a_dash_when_none(finished_sweep: str):
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.switch_page("views/portrait.py").run()
    assert not at.exception, at.exception
    box = at.selectbox(key="portrait.cell")
    assert box.value is None and box.proto.placeholder == "—"  # Streamlit showed "Choose an option"
    assert not _outlines(_figure(at))

    box.set_value(cell_key(10.0, 0.01)).run()  # the picker and a click in the portrait set this state
    assert not at.exception, at.exception
    shapes = _outlines(_figure(at))
    assert len(shapes) == 2 and {s["line"]["color"] for s in shapes} == {"black", "white"}
    gamma_edges = log_cell_edges(np.array(GAMMAS))
    eta_edges = log_cell_edges(np.array(ETAS))
    for shape in shapes:  # exactly the cell's edges (log10 coordinates of the figure)
        assert shape["type"] == "rect"
        np.testing.assert_allclose([shape["x0"], shape["x1"]], gamma_edges[2:4])
        np.testing.assert_allclose([shape["y0"], shape["y1"]], eta_edges[0:2])

    # a copied link with the cell opens with it outlined
    shared = AppTest.from_file(MAIN, default_timeout=60)
    shared.query_params.update({"sweep": finished_sweep, "cell": cell_key(0.1, 0.1)})
    shared.switch_page("views/portrait.py").run()
    assert not shared.exception, shared.exception
    shape = _outlines(_figure(shared))[0]
    np.testing.assert_allclose(
        [shape["x0"], shape["x1"], shape["y0"], shape["y1"]], [*gamma_edges[0:2], *eta_edges[1:3]]
    )


def test_compare_statistic_picker_shows_the_portraits_labels(finished_sweep: str):
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.switch_page("views/compare.py").run()
    assert not at.exception, at.exception
    stat = at.selectbox(key="compare.stat")
    assert stat.options == [STATS["final"], STATS["best"]]  # was the raw names "final", "best"
    stat.set_value("best").run()
    assert not at.exception, at.exception
    assert at.query_params["stat"] == "best"  # the URL keeps the name, not the label


def test_a_click_on_a_curve_marker_selects_the_cell_it_lies_in():
    """Clicking the middle of a cell on the η* ridge hit the ridge's marker (its η lies between grid
    values) and selected nothing; it selects the cell the marker lies in, and nothing off the grid."""
    from app.logic.portrait import selected_cell, snap_to_cell

    grid = heatmap_grid(_frame())  # γ 0.1, 1; η 0.1, 1
    ridge_point = {"selection": {"points": [{"curve_number": 5, "customdata": [1.0, 0.25]}]}}
    assert snap_to_cell(grid, *selected_cell(ridge_point)) == (1.0, 0.1)  # log-nearer to 0.1 than to 1
    assert snap_to_cell(grid, 1.0, 0.5) == (1.0, 1.0)
    assert snap_to_cell(grid, 0.1, 0.1) == (0.1, 0.1)  # a cell's own target
    assert snap_to_cell(grid, 100.0, 0.1) is None and snap_to_cell(grid, 1.0, 1e-4) is None  # off the grid


def test_empty_multiselects_say_what_empty_means(finished_sweep: str):
    # Streamlit's "Choose options" read as if something had to be chosen; an empty filter means all
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.switch_page("views/runs.py").run()
    assert not at.exception, at.exception
    status = at.multiselect(key="runs.status")
    assert status.value == [] and status.proto.placeholder == "all statuses"
    at.switch_page("views/portrait.py").run()
    assert at.multiselect(key="portrait.show").proto.placeholder == "none"


def test_cancelling_a_sweep_warns_which_other_sweeps_lose_shared_runs(tmp_path: Path, monkeypatch) -> None:
    settings = load_settings(data_dir=tmp_path / "data")
    settings.ensure_dirs()
    configs = [RunConfig(model=ModelConfig(width=8, depth=3), gamma=g, eta=0.1, seed=0) for g in GAMMAS]
    reg = Registry(settings.registry_url)
    first = reg.create_sweep("first", "t", {})
    reg.add_runs(first, configs)  # queued, nobody trains them
    again = reg.create_sweep("again", "t", {})
    reg.add_runs(again, configs[:2])  # the re-launch shares two of the runs
    reg.close()
    monkeypatch.setenv("GAMMA_LAB_DATA", str(settings.data_dir))
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.query_params["sweep"] = again
    at.switch_page("views/runs.py").run()
    assert not at.exception, at.exception
    at.button(key="runs.cancel").click().run()
    assert not at.exception, at.exception
    assert [w.value for w in at.warning] == [
        f"These runs are shared with other sweeps, so this also stopped 2 run(s) of sweep {first}."
    ]
