"""Diagnostics helpers: the edge of stability and per-layer movement frames."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

ALIGNMENTS = ("alignment_feature", "alignment_feature_centered", "alignment_ntk", "alignment_ntk_centered")
COSTLY = ("alignment", "sharpness", "movement")  # the Diagnostics page's sections, as train.metrics names them
LAUNCH_FIELD = "Costly metrics on the eval schedule"  # the Launch page's multiselect (app/views/launch.py)


def unrecorded(spec: dict[str, Any] | None) -> list[str]:
    """The costly metrics a sweep's spec did not ask for (train.metrics; the engine's default records all)."""
    from engine.config import TrainConfig

    asked = ((spec or {}).get("train") or {}).get("metrics")
    recorded = TrainConfig().metrics if asked is None else tuple(asked)
    return [m for m in COSTLY if m not in recorded]


def unrecorded_note(missing: Sequence[str], spec: dict[str, Any] | None) -> str:
    """What to say instead of blank charts: which metrics the sweep did not record and how to record them."""
    from engine.config import METRICS

    asked = list(((spec or {}).get("train") or {}).get("metrics") or [])
    names = missing[0] if len(missing) == 1 else f"{', '.join(missing[:-1])} and {missing[-1]}"
    wanted = ", ".join(f'"{m}"' for m in dict.fromkeys([*asked, *missing]))
    quoted = ", ".join(f'"{m}"' for m in asked)
    return (
        f"This sweep did not record {names} (its spec says train.metrics = [{quoted}]), so "
        f"{'that chart is' if len(missing) == 1 else 'those charts are'} not drawn. To record "
        f"{'it' if len(missing) == 1 else 'them'}, launch a sweep with {names} chosen under "
        f"Launch's “{LAUNCH_FIELD}”, or set `train.metrics = [{wanted}]` in its spec TOML "
        f"(allowed names: {', '.join(METRICS)})."
    )


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
