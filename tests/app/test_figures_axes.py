"""Axes a researcher reads: powers of ten on log axes."""

from __future__ import annotations

import pandas as pd

from app.logic.figures import lines_figure, trajectories_figure, twin_axes_figure


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
