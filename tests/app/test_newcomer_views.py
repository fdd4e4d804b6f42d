"""Issue 10, items 1-4: what a newcomer saw wrong on Trajectories, Overlays, Portrait and Compare.

The pages run through AppTest on a store seeded by the real publisher and recorder (two tiny sweeps
of synthetic curves whose statistics are known exactly); the figure logic is checked on its own too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from app.logic.figures import DIVERGED_COLOUR, portrait_figure, trajectories_figure
from app.logic.grid import difference_grid, heatmap_grid
from app.logic.portrait import overlay_curves, ridge_points

from .plotly_json import arr

MAIN = str(Path(__file__).resolve().parents[2] / "app" / "main.py")
GAMMAS = (0.1, 1.0, 10.0)
ETAS = (0.001, 0.01, 0.1, 1.0)
STEPS = 100
THRESHOLD = 0.05


def _loss(eta: float, scale: float) -> np.ndarray:
    """(STEPS,) loss of a run at η: 1 at t = 0 for every η (value at t = 0 ties), then
    exp(-t/10) at η = 0.1 (reaches 0.05 at t = 30), slower below: 0.37 and 0.9 at the end (never reach
    it); η = 1 diverges at t = 3, before reaching it."""
    t = np.arange(STEPS, dtype=float)
    tau = {0.001: 1000.0, 0.01: 100.0, 0.1: 10.0, 1.0: 5.0}[eta]
    out = scale * np.exp(-t / tau)
    if eta == 1.0:
        out[3:] = np.inf
    return out


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> dict:
    """Sweep A (loss as _loss) and sweep B (twice A's loss: A better by log10 2 everywhere). In A the
    γ = 10, η = 0.001 cell was cancelled before it ran."""
    from engine.config import ModelConfig, RunConfig
    from storage.bus import open_publisher
    from storage.recorder import Recorder
    from storage.registry import Registry
    from storage.settings import load_settings

    data = tmp_path_factory.mktemp("newcomer")
    settings = load_settings(data_dir=data, workers=1)
    settings.ensure_dirs()
    reg = Registry(settings.registry_url)
    pub = open_publisher(settings)
    spec = {"model": {"depth": 3, "width": 8}, "train": {"steps": STEPS}}
    ids = {}
    for name, scale, lr_offset in (("A", 1.0, 0), ("B", 2.0, 1)):
        sid = reg.create_sweep(f"newcomer-{name}", "t", spec)
        configs = [
            RunConfig(model=ModelConfig(width=8, depth=3), gamma=g, eta=e, seed=lr_offset)  # distinct runs
            for g in GAMMAS
            for e in ETAS
        ]
        reg.add_runs(sid, configs)
        for c in configs:
            if name == "A" and c.gamma == 10.0 and c.eta == 0.001:
                assert reg.request_cancel(c.run_id) == 1
                continue
            pub.started(c.run_id, 0, "w")
            value = _loss(c.eta, scale)
            pub.points(c.run_id, 0, np.arange(STEPS), ["train_loss"] * STEPS, value)
            diverged = c.eta == 1.0
            pub.finished(
                c.run_id, 0, "diverged" if diverged else "done", steps_done=STEPS, diverged_step=3 if diverged else None
            )
        ids[name] = sid
    with Recorder(settings) as rec:
        rec.drain()
    reg.close()
    return {"data": data, **ids}


def _page(seeded: dict, monkeypatch, page: str, **query: str) -> AppTest:
    import streamlit as st

    monkeypatch.setenv("GAMMA_LAB_DATA", str(seeded["data"]))
    st.cache_resource.clear()
    at = AppTest.from_file(MAIN, default_timeout=120)
    at.query_params.update(query)
    at.run()
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, at.exception
    return at


def _figures(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def _text(at: AppTest) -> str:
    return "\n".join([*(i.value for i in at.info), *(c.value for c in at.caption)])


# ---------------------------------------------------------------- 1. hand-picked runs, none picked yet


def test_trajectories_hand_picked_before_any_pick_says_pick_runs(seeded, monkeypatch):
    at = _page(seeded, monkeypatch, "trajectories", sweep=seeded["A"], mode="pick")
    assert at.selectbox(key="traj.mode").value == "pick"
    assert "Pick runs" in _text(at) and "12 in this sweep" in _text(at)
    # picking one run draws it
    run = at.multiselect(key="traj.runs").options[0]
    at.multiselect(key="traj.runs").select(run).run()
    assert not at.exception, at.exception
    assert any(t["name"].startswith("η=") for t in _figures(at)[0]["data"])


def test_trajectories_figure_of_no_runs_is_empty_not_an_error():
    series = pd.DataFrame(columns=["run_id", "step", "value", "kind"]).assign(x=[])
    runs = pd.DataFrame({"run_id": pd.Series(dtype=str), "gamma": [], "eta": [], "seed": []})
    assert trajectories_figure(series, runs).data == ()


def test_overlays_hand_picked_before_any_pick_says_pick_runs(seeded, monkeypatch):
    at = _page(seeded, monkeypatch, "overlays", sweep=seeded["A"], mode="pick")
    text = _text(at)
    assert "Pick runs" in text and "No finished runs" not in text


# ---------------------------------------------------------------- 2. not reached and cancelled cells


def test_portrait_steps_to_counts_not_reached_and_cancelled_apart_from_diverged(seeded, monkeypatch):
    at = _page(seeded, monkeypatch, "portrait", sweep=seeded["A"], stat="steps_to", threshold=str(THRESHOLD), live="0")
    # η = 0.1 reaches it (3 cells); η = 1 diverged (3); η = 0.01 and 0.001 never reach it (5); 1 cancelled
    caption = next(c.value for c in at.caption if c.value.startswith("ok:"))
    parts = caption.split(" · ")
    for part in ("ok: 3", "diverged: 3", "not reached: 5", "cancelled: 1", "missing: 0"):
        assert part in parts, caption
    fig = _figures(at)[0]
    names = [t.get("name") for t in fig["data"]]
    assert "not reached (finished above the threshold)" in names and "cancelled" in names
    diverged = next(t for t in fig["data"] if t["type"] == "heatmap" and t["name"] == "diverged")
    assert int(np.isfinite(arr(diverged["z"])).sum()) == 3  # only the diverged row is painted dark red
    marked = next(t for t in fig["data"] if t.get("name", "").startswith("not reached"))
    assert len(arr(marked["x"])) == 5 and marked["marker"]["symbol"] != "x-thin-open"


def test_heatmap_query_reports_not_reached_and_cancelled(seeded):
    from storage import queries
    from storage.settings import load_settings

    hm = queries.heatmap(load_settings(data_dir=seeded["data"]), seeded["A"], stat="steps_to", threshold=THRESHOLD)
    hm = hm.set_index(["gamma", "eta"])
    assert hm.loc[(1.0, 0.1), "cell_status"] == "ok" and hm.loc[(1.0, 0.1), "value"] == 30
    assert (hm.xs(0.01, level="eta")["cell_status"] == "not_reached").all()
    assert (hm.xs(0.01, level="eta")["n_not_reached"] == 1).all()
    assert (hm.xs(1.0, level="eta")["cell_status"] == "diverged").all()
    assert hm.loc[(10.0, 0.001), "cell_status"] == "cancelled" and hm.loc[(10.0, 0.001), "n_cancelled"] == 1


# ---------------------------------------------------------------- 3. difference centred at 0


def test_compare_difference_is_centred_at_zero_and_diverged_off_the_scale(seeded, monkeypatch):
    at = _page(seeded, monkeypatch, "compare", a=seeded["A"], b=seeded["B"], view="diff")
    fig = _figures(at)[0]
    main = fig["data"][0]
    z = arr(main["z"])
    assert np.nanmax(z) < 0  # A is better everywhere it has a value
    assert main["zmin"] == pytest.approx(-main["zmax"]) and main["zmax"] == pytest.approx(np.log10(2))
    scale = main["colorscale"]
    ends = {str(scale[0][1]).lower(), str(scale[-1][1]).lower()}
    diverged = next(t for t in fig["data"] if t["type"] == "heatmap" and t["name"] == "diverged")
    colour = diverged["colorscale"][0][1].lower()
    assert colour not in ends and colour != DIVERGED_COLOUR


def test_difference_figure_symmetric_range_for_mixed_values():
    frame = pd.DataFrame(
        dict(
            gamma=[1.0, 1.0, 1.0],
            eta=[0.01, 0.1, 1.0],
            value=[0.1, 0.2, np.nan],
            n_seeds=1,
            n_done=1,
            n_diverged=0,
            n_running=0,
            n_missing=0,
            cell_status=["ok", "ok", "diverged"],
        )
    )
    a, b = heatmap_grid(frame), heatmap_grid(frame.assign(value=[0.01, 0.4, np.nan]))
    fig = json.loads(
        portrait_figure(difference_grid(a, b), value_label="d", log_value=False, centre_zero=True).to_json()
    )
    main = fig["data"][0]
    assert (main["zmin"], main["zmax"]) == pytest.approx((-1.0, 1.0))  # |log10(0.1/0.01)| = 1 > log10 2


# ---------------------------------------------------------------- 4. ties and edges of the η* ridge


def test_portrait_value_at_step_0_draws_no_ridge(seeded, monkeypatch):
    at = _page(seeded, monkeypatch, "portrait", sweep=seeded["A"], stat="at_step", step="0", live="0")
    names = [t.get("name") for t in _figures(at)[0]["data"]]
    assert not any("η*" in str(n) or "theory" in str(n) for n in names), names
    assert "does not separate the cells" in _text(at)
    # the final value separates them: a ridge (η* = 0.1, bracketed)
    final = _page(seeded, monkeypatch, "portrait", sweep=seeded["A"], live="0")
    assert "η* ridge" in [t.get("name") for t in _figures(final)[0]["data"]]


def _grid_with_minimum_at(rows: dict[float, int]) -> pd.DataFrame:
    """A 4-γ × 5-η frame whose minimum of each γ column is at the given η index."""
    etas = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    out = []
    for g, best in rows.items():
        for i, e in enumerate(etas):
            out.append(
                dict(
                    gamma=g,
                    eta=e,
                    value=0.01 * (1 + (i - best) ** 2),
                    n_seeds=1,
                    n_done=1,
                    n_diverged=0,
                    n_running=0,
                    n_missing=0,
                    cell_status="ok",
                )
            )
    return pd.DataFrame(out)


def test_eta_star_on_the_grid_edge_is_flagged_and_left_out_of_the_fit():
    grid = heatmap_grid(_grid_with_minimum_at({0.01: 0, 0.1: 1, 0.3: 2, 0.5: 3}))
    found = ridge_points(grid)
    assert found.edge.tolist() == [True, False, False, False]
    curves, fits = overlay_curves(grid, depth=3)
    names = [c.name for c in curves]
    assert "η* at the grid edge (not bracketed)" in names
    edge = next(c for c in curves if c.name.startswith("η* at the grid edge"))
    assert edge.gammas.tolist() == [0.01] and edge.symbol != "circle" and not edge.lines
    lazy = next(f for f in fits if f.name.startswith("fit η*"))
    assert lazy.fit.n == 3 and "1 η* at the grid edge left out" in lazy.label()


def test_tied_column_has_no_eta_star():
    frame = _grid_with_minimum_at({0.1: 2, 0.3: 2})
    frame.loc[frame["gamma"] == 0.3, "value"] = 0.5  # every η of γ = 0.3 gives the same value
    found = ridge_points(heatmap_grid(frame))
    assert found.gammas.tolist() == [0.1] and found.tied.tolist() == [0.3]
