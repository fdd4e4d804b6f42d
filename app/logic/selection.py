"""Which runs a trajectories/overlays view shows: a row (fixed γ), a column (fixed η), one cell,
the η* ridge, or a hand-picked set — chosen from a sweep's runs frame."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

MODES = {"row": "a row (fixed γ)", "column": "a column (fixed η)", "cell": "one cell (all seeds)",
         "ridge": "the η* ridge (best η per γ)", "pick": "hand-picked runs"}
MAX_RUNS = 200  # beyond this a figure stops being readable and costly to draw


def _close(values: pd.Series, target: float) -> np.ndarray:
    return np.isclose(values.to_numpy(dtype=np.float64), target, rtol=1e-9, atol=0.0)


def ridge_runs(runs: pd.DataFrame, metric_col: str = "tail_train_loss") -> pd.DataFrame:
    """Per γ, all seeds of the η whose seed-mean `metric_col` is lowest among finished, non-diverged runs.

    By default the tail statistic (mean train loss over the last 10 % of steps: the last batch alone is
    one noisy draw, issue 11); a run recorded before it existed, or a frame without it, falls back to
    its final_train_loss."""
    values = runs[metric_col].astype(float) if metric_col in runs else pd.Series(np.nan, index=runs.index)
    if metric_col == "tail_train_loss" and "final_train_loss" in runs:
        values = values.fillna(runs["final_train_loss"].astype(float))
    scored = runs.assign(_stat=values)
    good = scored[(scored["status"] == "done") & np.isfinite(scored["_stat"])]
    if good.empty:
        return runs.iloc[0:0]
    means = good.groupby(["gamma", "eta"])["_stat"].mean().reset_index()
    best = means.loc[means.groupby("gamma")["_stat"].idxmin(), ["gamma", "eta"]]
    return runs.merge(best, on=["gamma", "eta"], how="inner")


def select_runs(runs: pd.DataFrame, mode: str, *, gamma: float | None = None, eta: float | None = None,
                picked: Sequence[str] = (), limit: int = MAX_RUNS) -> pd.DataFrame:
    """Runs for a view mode (see MODES), at most `limit` of them (ordered by γ, η, seed)."""
    if mode not in MODES:
        raise ValueError(f"mode: must be one of {', '.join(MODES)} (got {mode!r})")
    if mode == "row":
        if gamma is None:
            raise ValueError("gamma: a row needs a γ")
        out = runs[_close(runs["gamma"], gamma)]
    elif mode == "column":
        if eta is None:
            raise ValueError("eta: a column needs an η")
        out = runs[_close(runs["eta"], eta)]
    elif mode == "cell":
        if gamma is None or eta is None:
            raise ValueError("gamma, eta: a cell needs both")
        out = runs[_close(runs["gamma"], gamma) & _close(runs["eta"], eta)]
    elif mode == "ridge":
        out = ridge_runs(runs)
    else:
        out = runs[runs["run_id"].isin(list(picked))]
    return out.sort_values(["gamma", "eta", "seed"]).head(limit)


def nearest(values: Sequence[float], target: float | None) -> float | None:
    """The grid value nearest to target on a log scale (URL values may be rounded)."""
    arr = np.asarray(sorted(set(values)), dtype=np.float64)
    if arr.size == 0:
        return None
    if target is None or not np.isfinite(target) or target <= 0:
        return float(arr[0])
    return float(arr[int(np.argmin(np.abs(np.log(arr) - np.log(target))))])


def picked_from(
    runs: pd.DataFrame, sweep_id: str, others: dict[str, pd.DataFrame], sweeps: pd.DataFrame
) -> pd.DataFrame:
    """The runs to hand-pick from: this sweep's, then those of `others` (sweep id -> its runs), each row
    tagged with `source_sweep` and `sweep_name`. A run several of them share is listed once, under the
    first (a run belongs to every sweep that launched its cell)."""
    names = dict(zip(sweeps["sweep_id"], sweeps["name"], strict=False)) if not sweeps.empty else {}
    parts = [
        frame.assign(source_sweep=sid, sweep_name=names.get(sid, sid))
        for sid, frame in [(sweep_id, runs), *others.items()]
        if not frame.empty
    ]
    if not parts:
        return runs.assign(source_sweep=pd.Series(dtype=str), sweep_name=pd.Series(dtype=str))
    return pd.concat(parts, ignore_index=True).drop_duplicates("run_id", keep="first").reset_index(drop=True)
