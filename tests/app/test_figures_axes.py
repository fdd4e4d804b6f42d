"""Axes a researcher reads: powers of ten on log axes, nothing drawn where a log axis has no value."""

from __future__ import annotations

import numpy as np
import pandas as pd

from app.logic.figures import lines_figure, trajectories_figure, twin_axes_figure

from .plotly_json import arr


def _series() -> pd.DataFrame:
    return pd.DataFrame(
        {"run_id": ["a"] * 4, "x": [1.0, 3.0, 11.0, 35.0], "value": [0.1, 1e4, 1e10, 1e16], "kind": ["point"] * 4}
    )


def test_log_axes_label_powers_of_ten_not_si_suffixes():
    """A diverging loss's axis read '10B', '100T' and a sharpness axis '100μ' (plotly's SI default)."""
    runs = pd.DataFrame({"run_id": ["a"], "gamma": [0.01], "eta": [1.0], "seed": [0]})
    figs = [
        trajectories_figure(_series(), runs, log_x=True, log_y=True),
        lines_figure(_series().assign(label="a"), x_label="step t + 1", y_label="sharpness"),
        twin_axes_figure(_series(), _series(), left_label="train_loss", right_label="alignment"),
    ]
    for fig in figs:
        layout = fig.to_plotly_json()["layout"]
        log_axes = [v for k, v in layout.items() if k.startswith(("xaxis", "yaxis")) and v.get("type") == "log"]
        assert log_axes
        assert all(a.get("exponentformat") == "power" for a in log_axes), log_axes
    linear = trajectories_figure(_series(), runs, log_x=False, log_y=False).to_plotly_json()["layout"]
    assert linear["yaxis"]["type"] == "linear"


def test_lines_on_a_log_axis_leave_out_zeros():
    """Per-layer movement is exactly 0 at initialization: on the log axis plotly drew that point as a
    vertical line falling off the bottom of the plot."""
    movement = pd.DataFrame(
        {
            "x": [1.0, 3.0, 11.0, 1.0, 3.0, 11.0],
            "value": [0.0, 1e-3, 1e-2, 0.0, 2e-3, 3e-2],
            "label": ["movement_l1"] * 3 + ["movement_l2"] * 3,
        }
    )
    fig = lines_figure(movement, x_label="step t + 1", y_label="relative movement").to_plotly_json()
    for trace in fig["data"]:
        y = arr(trace["y"])
        assert np.all(y > 0), (trace["name"], y)
        assert len(y) == 2
    linear = lines_figure(movement, x_label="step", y_label="movement", log_y=False).to_plotly_json()
    assert all(len(arr(t["y"])) == 3 for t in linear["data"])  # a linear axis keeps the zeros


def test_portrait_legend_explains_diverged_cells():
    """The dark red diverged cells are a heatmap layer, and heatmaps have no legend entry: the
    portrait showed them unexplained. A legend-only marker of the same colour names them."""
    from app.logic.figures import DIVERGED_COLOUR, portrait_figure
    from app.logic.grid import heatmap_grid

    frame = pd.DataFrame(
        {
            "gamma": [0.1, 0.1, 1.0, 1.0],
            "eta": [0.1, 1.0, 0.1, 1.0],
            "value": [0.05, np.nan, 0.02, 0.01],
            "n_seeds": 1,
            "n_done": [1, 0, 1, 1],
            "n_diverged": [0, 1, 0, 0],
            "n_running": 0,
            "n_missing": 0,
            "cell_status": ["ok", "diverged", "ok", "ok"],
        }
    )
    fig = portrait_figure(heatmap_grid(frame), value_label="train_loss").to_plotly_json()
    entries = [t for t in fig["data"] if t["type"] == "scatter" and t.get("name") == "diverged"]
    assert len(entries) == 1 and entries[0]["marker"]["color"] == DIVERGED_COLOUR
    assert entries[0].get("showlegend", True)
    none = portrait_figure(heatmap_grid(frame.assign(cell_status="ok", value=0.1)), value_label="train_loss")
    assert not [t for t in none.to_plotly_json()["data"] if t.get("name") == "diverged"]
