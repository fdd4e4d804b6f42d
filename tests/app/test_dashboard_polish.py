"""Polish from a researcher's acceptance pass: hover numbers without trailing zeros, readable
alignment ticks, the selected portrait cell outlined, the pickers' labels."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from app.logic.figures import Curve, portrait_figure, trajectories_figure
from app.logic.grid import heatmap_grid


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
