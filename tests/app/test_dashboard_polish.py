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
