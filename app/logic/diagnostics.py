"""Diagnostics helpers: the edge of stability and per-layer movement frames."""

from __future__ import annotations

import numpy as np
import pandas as pd

ALIGNMENTS = ("alignment_feature", "alignment_feature_centered", "alignment_ntk", "alignment_ntk_centered")


def edge_of_stability(runs: pd.DataFrame, x_range: tuple[float, float]) -> pd.DataFrame:
    """Horizontal lines at 2/(N·η) per run: plain SGD with step N·η is stable only while the top
    Hessian eigenvalue stays below 2/step. `runs`: run_id, eta, width. Returns x, value, label, match."""
    rows = []
    for r in runs.itertuples():
        if r.width and r.eta:
            level = 2.0 / (float(r.width) * float(r.eta))
            label = f"2/(N·η) η={r.eta:.3g}"
            match = f"η={r.eta:.3g} "  # the runs' legend labels read "γ=… η=… s=…"
            rows += [(x_range[0], level, label, match), (x_range[1], level, label, match)]
    return pd.DataFrame(rows, columns=["x", "value", "label", "match"])


def movement_metrics(depth: int) -> list[str]:
    return [f"movement_l{i}" for i in range(1, depth + 1)]


def label_series(frame: pd.DataFrame, runs: pd.DataFrame, extra: str = "") -> pd.DataFrame:
    """Add x = step + 1 and a legend label per run (γ, η, seed) to a trajectories frame."""
    meta = runs.set_index("run_id")
    out = frame[np.isin(frame["kind"], ["point", "min", "max"])].copy()
    out["x"] = out["step"].astype(float) + 1.0
    out["label"] = [f"{extra}γ={meta.at[r, 'gamma']:.3g} η={meta.at[r, 'eta']:.3g} s={meta.at[r, 'seed']}"
                    for r in out["run_id"]]
    return out
