"""Pure logic behind the dashboard: grid edges, heatmap layout, portrait overlays, URL state, the form."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from app.logic.figures import ema_smooth, portrait_figure, trajectories_figure
from app.logic.grid import difference_grid, heatmap_grid, log_cell_edges, shared_log_range
from app.logic.launch import errors_by_field, form_to_spec, parse_axis, spec_to_form
from app.logic.portrait import boundary, overlay_curves, ridge, selected_cell
from app.logic.presets import DEMO, available_presets
from app.logic.selection import nearest, select_runs
from app.logic.view_state import Field, read_view, write_view
from engine.config import ConfigError

from .plotly_json import arr


def heatmap_frame(gammas, etas, value, status) -> pd.DataFrame:
    rows = []
    for j, g in enumerate(gammas):
        for i, e in enumerate(etas):
            rows.append(
                dict(
                    gamma=g,
                    eta=e,
                    value=value[i][j],
                    n_seeds=2,
                    n_done=2,
                    n_diverged=0,
                    n_running=0,
                    n_missing=0,
                    cell_status=status[i][j],
                )
            )
    return pd.DataFrame(rows)


def test_log_cell_edges_are_geometric_midpoints_for_uneven_grids():
    edges = log_cell_edges([1e-3, 1e-2, 1.0])
    np.testing.assert_allclose(edges, [-3.5, -2.5, -1.0, 1.0])  # midpoint of 1e-2 and 1 is 1e-1; outer edges mirror
    np.testing.assert_allclose(log_cell_edges([10.0]), [0.5, 1.5])
    with pytest.raises(ValueError, match="values"):
        log_cell_edges([1.0, 0.1])


def test_heatmap_grid_never_shows_non_ok_cells_as_values():
    frame = heatmap_frame(
        [0.1, 1.0], [0.01, 0.1], [[0.05, 0.02], [np.inf, 0.01]], [["ok", "ok"], ["diverged", "running"]]
    )
    frame = frame[~((frame.gamma == 1.0) & (frame.eta == 0.01))]  # an absent cell becomes missing
    grid = heatmap_grid(frame)
    assert grid.status.tolist() == [["ok", "missing"], ["diverged", "running"]]
    ok = grid.ok_values()
    assert ok[0, 0] == 0.05 and np.isnan(ok[1, 0]) and np.isnan(ok[1, 1]) and np.isnan(ok[0, 1])


def test_portrait_figure_layers_and_values():
    frame = heatmap_frame(
        [0.1, 1.0, 10.0],
        [0.001, 0.01, 0.1],
        [[0.09, 0.08, 0.07], [0.05, 0.02, 0.06], [np.nan, 0.03, 0.01]],
        [["ok", "ok", "ok"], ["ok", "ok", "ok"], ["diverged", "ok", "running"]],
    )
    grid = heatmap_grid(frame)
    curves, fits = overlay_curves(grid, depth=3)
    fig = json.loads(portrait_figure(grid, value_label="loss", curves=curves).to_json())
    names = [t.get("name") for t in fig["data"]]
    assert "diverged" in names and "running" in names and "η* ridge" in names
    main = fig["data"][0]
    np.testing.assert_allclose(arr(main["x"]), log_cell_edges(grid.gammas))
    z = arr(main["z"])
    assert np.isnan(z[2, 0]) and np.isnan(z[2, 2])  # diverged and running cells carry no value
    np.testing.assert_allclose(z[1, 1], np.log10(0.02))
    assert fig["layout"]["uirevision"] == "gamma-lab"
    assert any("theory η ∝ γ^(2/L), L=3" == n for n in names)


def test_portrait_click_anywhere_in_a_cell_selects_it():
    # A user clicked inside a cell, off its 18 px centre marker, and nothing was selected: the click
    # landed on the heatmap (not selectable). Now the heatmaps take no hover, the click targets carry
    # the value, and hoverdistance=-1 makes the nearest centre (the cell under the pointer) the hovered
    # point, which plotly selects on click.
    frame = heatmap_frame([0.1, 1.0], [0.01, 0.1], [[0.05, 0.02], [np.inf, 0.01]], [["ok", "ok"], ["diverged", "ok"]])
    grid = heatmap_grid(frame)
    fig = json.loads(portrait_figure(grid, value_label="loss").to_json())
    heatmaps = [t for t in fig["data"] if t["type"] == "heatmap"]
    assert len(heatmaps) == 2 and all(t.get("hoverinfo") == "skip" for t in heatmaps)
    targets = next(t for t in fig["data"] if t.get("name") == "cells")
    assert fig["layout"]["hoverdistance"] == -1 and fig["layout"]["hovermode"] == "closest"
    assert "loss=%{customdata[2]" in targets["hovertemplate"]
    points = [{"customdata": list(cd)} for cd in targets["customdata"]]
    cells = [selected_cell({"selection": {"points": [p]}}) for p in points]
    assert sorted(cells) == [(0.1, 0.01), (0.1, 0.1), (1.0, 0.01), (1.0, 0.1)]
    by_cell = {(cd[0], cd[1]): cd for cd in targets["customdata"]}
    assert by_cell[(1.0, 0.1)][2] == 0.01 and by_cell[(0.1, 0.1)][5] == "diverged"


def test_running_cells_show_their_latest_value_faded_on_the_same_scale():
    # A researcher watching a sweep saw only "running" circles until whole units finished; now a
    # running cell shows its seeds' latest value, faded, with the step in the hover.
    frame = heatmap_frame(
        [0.1, 1.0], [0.01, 0.1], [[0.05, np.nan], [0.01, np.nan]], [["ok", "running"], ["ok", "running"]]
    )
    frame["live_value"] = [np.nan, np.nan, 0.5, np.nan]  # γ=1, η=0.01 has logged; γ=1, η=0.1 not yet
    frame["live_step"] = [np.nan, np.nan, 40.0, np.nan]
    grid = heatmap_grid(frame)
    fig = json.loads(portrait_figure(grid, value_label="loss").to_json())
    main = next(t for t in fig["data"] if t["type"] == "heatmap" and t["name"] == "loss")
    live = next(t for t in fig["data"] if t["type"] == "heatmap" and t["name"] == "running (latest value)")
    z_live = arr(live["z"])
    np.testing.assert_allclose(z_live[0, 1], np.log10(0.5))
    assert np.isnan(z_live[1, 1]) and np.isnan(z_live[:, 0]).all()  # no value yet; ok cells are not provisional
    assert live["opacity"] < 1 and not live["showscale"]
    # one colour scale for both layers, spanning final and provisional values
    assert (main["zmin"], main["zmax"]) == (live["zmin"], live["zmax"])
    assert main["zmin"] == pytest.approx(np.log10(0.01)) and main["zmax"] == pytest.approx(np.log10(0.5))
    targets = next(t for t in fig["data"] if t.get("name") == "cells")
    by_cell = {(cd[0], cd[1]): cd for cd in targets["customdata"]}
    assert "latest loss=0.5 at step 40 (provisional)" in by_cell[(1.0, 0.01)][6]
    assert by_cell[(0.1, 0.01)][6] == "" and "%{customdata[6]}" in targets["hovertemplate"]
    # an ok cell's live value (a stale frame) is never drawn as provisional
    frame.loc[0, "live_value"] = 0.3
    assert np.isnan(heatmap_grid(frame).live[0, 0])


def test_ridge_and_boundary():
    frame = heatmap_frame(
        [0.1, 1.0],
        [0.001, 0.01, 0.1, 1.0],
        [[0.09, 0.09], [0.02, 0.05], [0.05, 0.01], [np.nan, 0.08]],
        [["ok", "ok"], ["ok", "ok"], ["ok", "ok"], ["diverged", "ok"]],
    )
    grid = heatmap_grid(frame)
    g, e = ridge(grid)
    assert g.tolist() == [0.1, 1.0]
    assert 0.001 <= e[0] <= 0.1 and 0.01 <= e[1] <= 1.0
    bg, be = boundary(grid)
    assert bg.tolist() == [0.1] and be.tolist() == [0.1]  # γ=1 never diverged: no boundary drawn


def test_selected_cell_reads_customdata():
    event = {"selection": {"points": [{"x": -1.0, "y": -2.0, "customdata": [0.1, 0.01, "ok"]}]}}
    assert selected_cell(event) == (0.1, 0.01)
    assert selected_cell({"selection": {"points": [{"x": 0.0, "y": -1.0}]}}) == (1.0, 0.1)
    assert selected_cell({"selection": {"points": []}}) is None


def test_view_state_round_trip_and_bad_values():
    schema = {
        "metric": Field("str", "train_loss", choices=("train_loss", "test_loss")),
        "step": Field("int", 0, minimum=0),
        "show": Field("list", ["ridge"], choices=("ridge", "fits")),
        "live": Field("bool", True),
        "gamma": Field("float", None),
    }
    values = {"metric": "test_loss", "step": 40, "show": ["fits"], "live": False, "gamma": 0.1}
    params = write_view(values, schema)
    assert read_view(params, schema) == values
    bad = read_view({"metric": "rm -rf", "step": "-3", "show": "x,fits", "live": "maybe", "gamma": "nan"}, schema)
    assert bad == {"metric": "train_loss", "step": 0, "show": ["fits"], "live": True, "gamma": None}
    assert write_view({"metric": "train_loss"}, schema) == {}


def test_launch_form_round_trip_and_errors():
    form = spec_to_form(DEMO)
    spec, errors = form_to_spec(form)
    assert not errors and spec["grid"]["gamma"] == DEMO["grid"]["gamma"]
    assert parse_axis("grid.eta", "1e-4 .. 10 / 2") == {"from": 1e-4, "to": 10.0, "per_decade": 2.0}
    form["grid.eta"] = "0.1, lots"
    _, errors = form_to_spec(form)
    assert [e.field for e in errors] == ["grid.eta"]
    grouped = errors_by_field(
        [ConfigError("grid.eta.from", "bad"), ConfigError("model.width", "too big"), ConfigError("spec", "x")]
    )
    assert grouped == {"grid.eta": ["bad"], "model.width": ["too big"], "spec": ["spec: x"]}


def test_launch_form_round_trips_every_spec_field():
    """Clone-and-edit goes spec -> form -> spec: nothing may be dropped or changed on the way."""
    from tasks.spec import SweepSpec

    rich = SweepSpec.from_dict(
        {
            "name": "vit-teacher-adaptive",
            "model": {
                "arch": "vit",
                "width": 12,
                "depth": 2,
                "patch": 2,
                "heads": 3,
                "activation": "tanh",
                "centered": False,
            },
            "data": {
                "dataset": "teacher",
                "input_dim": 5,
                "image_size": 6,
                "channels": 2,
                "n_classes": 4,
                "noise": 0.25,
                "test_size": 64,
                "data_seed": 9,
            },
            "train": {
                "loss": "xent",
                "batch_size": 16,
                "steps": 30,
                "dtype": "float64",
                "eval_points": 3,
                "metrics": ["test"],
                "divergence_factor": 50.0,
                "probe_size": 8,
            },
            "grid": {
                "gamma": [0.5, 2.0],
                "eta": {"from": 0.01, "to": 1.0, "per_decade": 2},
                "seeds": [3, 4],
                "adaptive": True,
                "below_max_decades": 1.5,
            },
        }
    ).to_dict()
    back, errors = form_to_spec(spec_to_form(rich))
    assert not errors
    assert SweepSpec.from_dict(back).to_dict() == rich


def test_demo_preset_is_a_valid_spec(tmp_path):
    from tasks.spec import SweepSpec

    presets = available_presets(tmp_path)
    assert len(presets) == 2  # no CIFAR-5M files in the data folder
    for spec in presets.values():
        SweepSpec.from_dict(spec)
    (tmp_path / "cifar5m").mkdir()
    (tmp_path / "cifar5m" / "part0.npz").write_bytes(b"")
    assert len(available_presets(tmp_path)) == 3


def test_select_runs_and_nearest():
    runs = pd.DataFrame(
        {
            "run_id": list("abcdef"),
            "gamma": [0.1, 0.1, 0.1, 1.0, 1.0, 1.0],
            "eta": [0.01, 0.1, 1.0, 0.01, 0.1, 1.0],
            "seed": 0,
            "status": ["done", "done", "diverged", "done", "done", "done"],
            "final_train_loss": [0.05, 0.02, np.nan, 0.04, 0.03, 0.01],
        }
    )
    assert select_runs(runs, "row", gamma=0.1)["run_id"].tolist() == ["a", "b", "c"]
    assert select_runs(runs, "column", eta=0.1)["run_id"].tolist() == ["b", "e"]
    assert select_runs(runs, "ridge")["run_id"].tolist() == ["b", "f"]
    assert nearest([0.1, 1.0], 0.09) == 0.1
    with pytest.raises(ValueError, match="mode"):
        select_runs(runs, "diagonal")


def test_trajectories_figure_groups_by_colour_and_marks_divergence():
    runs = pd.DataFrame({"run_id": ["a", "b", "c"], "gamma": [0.1, 0.1, 1.0], "eta": [0.01, 0.1, 0.01], "seed": 0})
    series = pd.DataFrame(
        {
            "run_id": ["a", "a", "b", "b", "c", "c"],
            "x": [1, 10, 1, 10, 1, 10],
            "value": [0.1, 0.05, 0.1, np.inf, 0.1, 0.01],
            "kind": ["point", "point", "point", "diverged", "point", "point"],
        }
    )
    by_gamma = json.loads(trajectories_figure(series, runs, colour_by="gamma").to_json())
    names = [t["name"] for t in by_gamma["data"]]
    assert names == ["γ=0.1", "γ=1", "diverged"]
    by_eta = json.loads(trajectories_figure(series, runs, colour_by="eta").to_json())
    assert [t["name"] for t in by_eta["data"]] == ["η=0.01", "η=0.1", "diverged"]
    smooth = ema_smooth(series[series.kind == "point"], 5)
    assert smooth["value"].between(0.01, 0.1).all()


def test_compare_helpers():
    fa = heatmap_frame([0.1, 1.0], [0.01], [[0.1, 0.01]], [["ok", "ok"]])
    fb = heatmap_frame([0.1, 1.0], [0.01], [[0.01, np.nan]], [["ok", "diverged"]])
    ga, gb = heatmap_grid(fa), heatmap_grid(fb)
    assert shared_log_range(ga, gb) == (-2.0, -1.0)
    diff = difference_grid(ga, gb)
    np.testing.assert_allclose(diff.value[0, 0], 1.0)
    assert diff.status.tolist() == [["ok", "diverged"]]


def test_edge_of_stability_lines_take_their_runs_colour():
    from app.logic.diagnostics import edge_of_stability
    from app.logic.figures import lines_figure

    runs = pd.DataFrame({"run_id": ["a", "b"], "eta": [0.1, 1.0], "width": [10, 10]})
    eos = edge_of_stability(runs, (1.0, 100.0))
    assert sorted(set(eos["value"])) == pytest.approx([0.2, 2.0])  # 2/(N·η)
    sharp = pd.DataFrame(
        {"x": [1.0, 2.0, 1.0, 2.0], "value": [0.1, 0.2, 1.0, 1.5], "label": ["γ=1 η=0.1 s=0"] * 2 + ["γ=1 η=1 s=0"] * 2}
    )
    fig = lines_figure(sharp, x_label="t", y_label="λ", hlines=eos).to_plotly_json()
    colour = {t["name"]: t["line"]["color"] for t in fig["data"]}
    assert colour["2/(N·η) η=0.1"] == colour["γ=1 η=0.1 s=0"] != colour["γ=1 η=1 s=0"] == colour["2/(N·η) η=1"]


def test_eta_star_is_fitted_on_each_side_of_the_crossover_against_its_theory():
    # One line through both regimes (the old single fit) gave a slope of neither; each side now has
    # its own fit, labelled with the slope theory predicts there: 2 lazy, 2/L rich.
    depth = 3
    gammas = 10.0 ** np.arange(-2.0, 2.01, 0.5)
    etas = 10.0 ** np.arange(-7.0, 2.01, 0.25)
    star = np.where(gammas < 1, 0.1 * gammas**2, 0.1 * gammas ** (2 / depth))  # (G,)
    rows = [
        dict(gamma=g, eta=e, value=0.01 * np.exp((np.log10(e) - np.log10(s)) ** 2), n_seeds=1, n_done=1,
             n_diverged=0, n_running=0, n_missing=0, cell_status="ok")
        for g, s in zip(gammas, star, strict=True)
        for e in etas
    ]
    grid = heatmap_grid(pd.DataFrame(rows))
    _, fits = overlay_curves(grid, depth=depth, show=("fits",))
    by_name = {f.name: f for f in fits}
    assert set(by_name) == {"fit η* (lazy, γ<1)", "fit η* (rich, γ>1)"}  # no boundary: nothing diverged
    lazy, rich = by_name["fit η* (lazy, γ<1)"], by_name["fit η* (rich, γ>1)"]
    assert lazy.fit.slope == pytest.approx(2.0, abs=1e-6) and lazy.fit.n == 4  # γ = 1 joins neither side
    assert rich.fit.slope == pytest.approx(2 / 3, abs=1e-6) and rich.fit.n == 4
    assert lazy.label().endswith("n=4; theory 2)") and rich.label().endswith("n=4; theory 0.667)")
    # the slope's error states the η grid's share: a quarter decade, ln(10)/4/√12 per point
    assert "grid ± " in lazy.label() and lazy.fit.grid_stderr > 0 and lazy.fit.total_stderr >= lazy.fit.grid_stderr
    # a sweep on one side only: one fit
    one_side = heatmap_grid(pd.DataFrame([r for r in rows if r["gamma"] < 1]))
    assert [f.name for f in overlay_curves(one_side, depth=depth, show=("fits",))[1]] == ["fit η* (lazy, γ<1)"]
