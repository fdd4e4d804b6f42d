"""The dashboard's read side: one object that pages ask for sweeps, runs and metric frames.

It wraps the registry (`storage.registry.Registry`) and the query functions of `storage.queries`
(docs/contracts.md), and shapes their answers into the DataFrames the figure builders take. Pages
never talk to storage directly, so the seam to storage is this one file.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

RUN_COLUMNS = ("run_id", "gamma", "eta", "seed", "status", "attempt", "worker", "steps_done", "diverged_step",
               "final_train_loss", "best_train_loss", "final_test_loss", "final_test_acc", "width", "depth",
               "error")
SWEEP_COLUMNS = ("sweep_id", "name", "owner", "created", "executor", "status", "n_runs", "queued", "running",
                 "done", "diverged", "failed", "cancelled", "lost", "progress")
FINISHED = ("done", "diverged", "failed", "cancelled", "lost")


def sweeps_frame(sweeps: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Registry sweep dicts -> one row per sweep with a count column per run status."""
    rows = []
    for s in sweeps:
        counts = s.get("counts", {})
        n = int(s.get("n_runs", sum(counts.values())))
        finished = sum(int(counts.get(k, 0)) for k in FINISHED)
        rows.append({
            "sweep_id": s["id"], "name": s["name"], "owner": s["owner"],
            "created": pd.to_datetime(s["created"], unit="s"), "executor": s.get("executor", ""),
            "status": s.get("status", ""), "n_runs": n,
            **{k: int(counts.get(k, 0)) for k in ("queued", "running", "done", "diverged", "failed",
                                                   "cancelled", "lost")},
            "progress": finished / n if n else 0.0,
        })
    return pd.DataFrame(rows, columns=list(SWEEP_COLUMNS))


def runs_frame(runs: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Registry run dicts -> one row per run; summary metrics flattened to columns."""
    rows = []
    for r in runs:
        summary = r.get("summary") or {}
        rows.append({
            "run_id": r["run_id"], "gamma": float(r["gamma"]), "eta": float(r["eta"]), "seed": int(r["seed"]),
            "status": r["status"], "attempt": r.get("attempt"), "worker": r.get("worker"),
            "steps_done": r.get("steps_done"), "diverged_step": r.get("diverged_step"),
            **{k: summary.get(k) for k in ("final_train_loss", "best_train_loss", "final_test_loss",
                                           "final_test_acc")},
            "width": r.get("width"), "depth": r.get("depth"), "error": r.get("error"),
        })
    frame = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    for col in ("final_train_loss", "best_train_loss", "final_test_loss", "final_test_acc"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame


def filter_runs(runs: pd.DataFrame, *, statuses: Sequence[str] = (), gammas: Sequence[float] = (),
                etas: Sequence[float] = (), text: str = "") -> pd.DataFrame:
    """Rows matching every given filter (an empty filter keeps everything). `text` matches run ids."""
    keep = np.ones(len(runs), dtype=bool)
    if statuses:
        keep &= runs["status"].isin(list(statuses)).to_numpy()
    if gammas:
        keep &= np.isclose(runs["gamma"].to_numpy()[:, None], np.asarray(gammas, dtype=float)[None, :],
                           rtol=1e-9).any(axis=1)
    if etas:
        keep &= np.isclose(runs["eta"].to_numpy()[:, None], np.asarray(etas, dtype=float)[None, :],
                           rtol=1e-9).any(axis=1)
    if text.strip():
        keep &= runs["run_id"].str.contains(text.strip(), regex=False).to_numpy()
    return runs[keep]


class DashboardSource:
    """Registry + metric queries for one data folder. Cheap to call; safe to share across sessions."""

    def __init__(self, settings: Any):
        from storage.registry import Registry

        self.settings = settings
        self.registry = Registry(settings.registry_url)

    # -- registry

    def sweeps(self, limit: int | None = 500) -> pd.DataFrame:
        return sweeps_frame(self.registry.list_sweeps(limit=limit))

    def sweep(self, sweep_id: str) -> dict[str, Any] | None:
        return self.registry.get_sweep(sweep_id)

    def runs(self, sweep_id: str) -> pd.DataFrame:
        return runs_frame(self.registry.list_runs(sweep_id))

    def run_configs(self, run_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {r["run_id"]: r["config"] for r in self.registry.get_runs(list(run_ids))}

    # -- metric queries (storage.queries; see docs/contracts.md)

    def _queries(self) -> Any:
        from storage import queries

        return queries

    def heatmap(self, sweep_id: str, *, metric: str = "train_loss", stat: str = "final", agg: str = "mean",
                step: int | None = None, threshold: float | None = None) -> pd.DataFrame:
        return self._queries().heatmap(self.settings, sweep_id, metric=metric, stat=stat, agg=agg, step=step,
                                       threshold=threshold)

    def trajectories(self, run_ids: Sequence[str], *, metric: str = "train_loss", max_points: int = 500,
                     log_x: bool = True) -> pd.DataFrame:
        if not run_ids:
            return pd.DataFrame(columns=["run_id", "step", "value", "kind"])
        return self._queries().trajectories(self.settings, list(run_ids), metric=metric, max_points=max_points,
                                            log_x=log_x)

    def overlay(self, run_ids: Sequence[str], *, metric: str = "train_loss", x: str = "t") -> pd.DataFrame:
        if not run_ids:
            return pd.DataFrame(columns=["run_id", "x", "value", "gamma", "eta"])
        return self._queries().overlay(self.settings, list(run_ids), metric=metric, x=x)

    def seed_bands(self, sweep_id: str, gamma: float, eta: float, metric: str = "train_loss") -> pd.DataFrame:
        return self._queries().seed_bands(self.settings, sweep_id, gamma, eta, metric)


def points_budget(n_runs: int, *, total: int = 4000, most: int = 500, least: int = 20) -> int:
    """Points per run so that a figure holds a few thousand points whatever the number of runs."""
    if n_runs <= 0:
        return most
    return int(max(least, min(most, total // n_runs)))


def now() -> float:
    return time.time()
