"""The dashboard's read side: one object that pages ask for sweeps, runs and metric frames.

It wraps the registry (`storage.registry.Registry`) and the query functions of `storage.queries`
(docs/contracts.md), and shapes their answers into the DataFrames the figure builders take. Pages
never talk to storage directly, so the seam to storage is this one file.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from storage.registry import ACTIVE_STATUSES, FINISH_STATUSES, RUN_STATUSES

SWEEP_COLUMNS = (
    "sweep_id",
    "name",
    "owner",
    "tags",
    "created",
    "executor",
    "device",
    "status",
    "newer",
    "n_runs",
    "queued",
    "running",
    "done",
    "diverged",
    "failed",
    "cancelled",
    "lost",
    "progress",
    "duration_s",
    "arch",
    "dataset",
    "started",
    "finished",
    "archived",
)
FINISHED = tuple(s for s in RUN_STATUSES if s not in ACTIVE_STATUSES)
# A run in one of these states gains no more points for its current attempt (a `lost` run can come
# back to life with a heartbeat, so it is not frozen): its series may be cached.
FROZEN = FINISH_STATUSES
CACHE_ENTRIES = 64  # results kept per DashboardSource (a 100-run trajectories frame is ~2 MB)


def newer_line(newer: dict[str, int]) -> str:
    """A sweep's `newer` counts in one line ('' when none): storage.registry.newer_line."""
    from storage.registry import newer_line as line

    return line(newer)


def sweeps_frame(sweeps: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Registry sweep dicts -> one row per sweep with a count column per run status (effective statuses)
    and `newer`: runs that show an earlier finished attempt, by their newer attempt's status."""
    rows = []
    for s in sweeps:
        counts = s.get("counts", {})
        n = int(s.get("n_runs", sum(counts.values())))
        finished = sum(int(counts.get(k, 0)) for k in FINISHED)
        rows.append(
            {
                "sweep_id": s["id"],
                "name": s["name"],
                "owner": s["owner"],
                "created": pd.to_datetime(s["created"], unit="s"),
                "executor": s.get("executor", ""),
                "device": s.get("device", ""),
                "status": s.get("status", ""),
                "newer": " ".join(f"{k}={v}" for k, v in sorted((s.get("newer") or {}).items())),
                "n_runs": n,
                **{
                    k: int(counts.get(k, 0))
                    for k in ("queued", "running", "done", "diverged", "failed", "cancelled", "lost")
                },
                "progress": finished / n if n else 0.0,
                **_organization(s),
            }
        )
    return pd.DataFrame(rows, columns=list(SWEEP_COLUMNS))


def _when(epoch: float | None) -> Any:
    return None if epoch is None else pd.to_datetime(epoch, unit="s")


def _organization(sweep: dict[str, Any]) -> dict[str, Any]:
    """A sweep's tags, times and what it trains (architecture, dataset): what the Runs page filters on."""
    spec = sweep.get("spec") or {}
    return {
        "tags": list(sweep.get("tags") or []),
        "duration_s": sweep.get("duration_s"),
        "arch": (spec.get("model") or {}).get("arch", ""),
        "dataset": (spec.get("data") or {}).get("dataset", ""),
        "started": _when(sweep.get("started")),
        "finished": _when(sweep.get("finished")),
        "archived": _when(sweep.get("archived")),
    }


def filter_sweeps(
    sweeps: pd.DataFrame,
    *,
    text: str = "",
    tags: Sequence[str] = (),
    owners: Sequence[str] = (),
    statuses: Sequence[str] = (),
    archs: Sequence[str] = (),
    datasets: Sequence[str] = (),
    since: Any = None,
    until: Any = None,
) -> pd.DataFrame:
    """Rows of sweeps_frame matching every given filter (an empty one keeps everything): `text` in the
    name or id (any case), any of `tags`, created on or after the date `since` and on or before `until`."""
    if sweeps.empty:
        return sweeps
    keep = np.ones(len(sweeps), dtype=bool)
    if text.strip():
        needle = text.strip().lower()
        keep &= (
            sweeps["name"].str.lower().str.contains(needle, regex=False) | sweeps["sweep_id"].str.startswith(needle)
        ).to_numpy()
    if tags:
        wanted = set(tags)
        keep &= sweeps["tags"].map(lambda have: bool(wanted.intersection(have))).to_numpy(dtype=bool)
    for column, allowed in (("owner", owners), ("status", statuses), ("arch", archs), ("dataset", datasets)):
        if allowed:
            keep &= sweeps[column].isin(list(allowed)).to_numpy()
    day = sweeps["created"].dt.normalize()
    if since is not None:
        keep &= (day >= pd.Timestamp(since)).to_numpy()
    if until is not None:
        keep &= (day <= pd.Timestamp(until)).to_numpy()
    return sweeps[keep]


LIVE = ("running", "lost")  # runs whose steps_done the registry does not know yet (a lost run may resume)


def with_progress(runs: pd.DataFrame, last: pd.DataFrame | None, total_steps: int | None) -> pd.DataFrame:
    """The runs table with how far each run has got: `steps_done` of running and lost runs filled in
    from `last` (run_id, last_step: storage.progress.last_steps; train_loss is logged every step, so
    last_step + 1 steps are done), and a `progress` column (steps_done / total_steps, in [0, 1]; NaN
    where unknown) right after it. The registry fills steps_done only when a run ends."""
    out = runs.copy()
    steps = pd.to_numeric(out["steps_done"], errors="coerce").astype("float64")
    if last is not None and not last.empty:
        done_now = pd.Series(last["last_step"].to_numpy(dtype=np.float64) + 1.0, index=last["run_id"].to_numpy())
        live = out["status"].isin(LIVE).to_numpy() & out["run_id"].isin(done_now.index).to_numpy()
        steps[live] = done_now.reindex(out.loc[live, "run_id"]).to_numpy()
    out["steps_done"] = steps.astype("Int64")
    fraction = (steps / float(total_steps)).clip(0.0, 1.0) if total_steps and total_steps > 0 else np.nan
    out.insert(out.columns.get_loc("steps_done") + 1, "progress", fraction)
    out["progress"] = out["progress"].astype("float64")
    return out


def progress_line(runs: pd.DataFrame, total_steps: int | None) -> str:
    """One line of live counts for a runs table (after with_progress): runs per status, and how far
    the running ones have got together, e.g. "queued: 4 · running: 2 (1,500 of 6,000 steps) · done: 6"."""
    counts = runs["status"].value_counts()
    parts = []
    for status in ("queued", "running", "done", "diverged", "failed", "cancelled", "lost"):
        n = int(counts.get(status, 0))
        if not n:
            continue
        text = f"{status}: {n:,}"
        if status == "running" and total_steps:
            done = runs.loc[runs["status"] == "running", "steps_done"].fillna(0).astype("int64").sum()
            text += f" ({int(done):,} of {n * int(total_steps):,} steps)"
        parts.append(text)
    return " · ".join(parts) if parts else "no runs"


FINAL = ("done", "diverged", "failed", "cancelled", "lost")


def eta_seconds(runs: pd.DataFrame, total_steps: int | None, now: float) -> float | None:
    """Seconds left for a sweep at the pace so far (after with_progress): the fraction of its steps
    done (a finished run counts whole) against the time since its first run started. None before
    there is a pace to go by (under 2 % done, or nothing started) and once nothing is left."""
    if not total_steps or runs.empty or not runs["status"].isin(("queued", "running")).any():
        return None
    steps = pd.to_numeric(runs["steps_done"], errors="coerce").fillna(0.0).clip(upper=total_steps)
    steps = steps.where(~runs["status"].isin(FINAL), float(total_steps))
    fraction = float(steps.sum()) / (len(runs) * float(total_steps))
    started = pd.to_datetime(runs["started"], utc=True, errors="coerce").dropna()
    if fraction < 0.02 or fraction >= 1.0 or started.empty:
        return None
    elapsed = now - started.min().timestamp()
    return elapsed * (1.0 - fraction) / fraction if elapsed > 0 else None


def filter_runs(
    runs: pd.DataFrame,
    *,
    statuses: Sequence[str] = (),
    gammas: Sequence[float] = (),
    etas: Sequence[float] = (),
    text: str = "",
) -> pd.DataFrame:
    """Rows matching every given filter (an empty filter keeps everything). `text` matches run ids."""
    keep = np.ones(len(runs), dtype=bool)
    if statuses:
        keep &= runs["status"].isin(list(statuses)).to_numpy()
    if gammas:
        keep &= np.isclose(runs["gamma"].to_numpy()[:, None], np.asarray(gammas, dtype=float)[None, :], rtol=1e-9).any(
            axis=1
        )
    if etas:
        keep &= np.isclose(runs["eta"].to_numpy()[:, None], np.asarray(etas, dtype=float)[None, :], rtol=1e-9).any(
            axis=1
        )
    if text.strip():
        keep &= runs["run_id"].str.contains(text.strip(), regex=False).to_numpy()
    return runs[keep]


class DashboardSource:
    """Registry + metric queries for one data folder. Cheap to call; safe to share across sessions.

    Reads are cached in this process (shared by every browser session) under keys that change
    exactly when the answer can: the runs table of a sweep under its registry fingerprint
    (storage.dashboard_reads.sweep_fingerprint, one grouped query); the heatmap only while the sweep
    is settled (nothing queued or running: no points can arrive); series of runs whose current
    attempt is finished under their (run_id, attempt). A live page thus re-reads only what changed,
    and a 10,000-run sweep is parsed once, not on every rerun. Returned frames are copies."""

    def __init__(self, settings: Any, *, cache_entries: int = CACHE_ENTRIES):
        from storage.registry import Registry

        self.settings = settings
        self.registry = Registry(settings.registry_url)
        self._cache: OrderedDict[Hashable, Any] = OrderedDict()
        self._cache_entries = cache_entries
        self._lock = threading.Lock()
        # run_id -> (shown attempt, effective status) as of the latest runs table read: tells which series
        # are frozen (the series pages read each run's shown attempt)
        self._known: dict[str, tuple[int, str]] = {}
        self.hits = 0
        self.misses = 0

    # -- cache

    def _cached(self, key: Hashable | None, compute: Callable[[], Any]) -> Any:
        """compute() once per key (LRU of `cache_entries`); key None means: do not cache."""
        if key is not None:
            with self._lock:
                if key in self._cache:
                    self._cache.move_to_end(key)
                    self.hits += 1
                    value = self._cache[key]
                    return value.copy() if isinstance(value, pd.DataFrame) else value
        value = compute()  # outside the lock: a slow query must not block other sessions' hits
        if key is not None:
            with self._lock:
                self.misses += 1
                self._cache[key] = value
                self._cache.move_to_end(key)
                while len(self._cache) > self._cache_entries:
                    self._cache.popitem(last=False)
            return value.copy() if isinstance(value, pd.DataFrame) else value
        return value

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()
            self._known.clear()

    def fingerprint(self, sweep_id: str) -> tuple[Any, ...]:
        """The sweep's registry fingerprint: changes whenever any of its runs changes status, attempt,
        start/end time or cancel flag (storage.dashboard_reads.sweep_fingerprint)."""
        from storage.dashboard_reads import sweep_fingerprint

        return sweep_fingerprint(self.registry, sweep_id)

    @staticmethod
    def settled(fingerprint: tuple[Any, ...]) -> bool:
        """No run queued or running: nothing of this sweep can change without the fingerprint changing."""
        return not any(row[0] in ("queued", "running") for row in fingerprint)

    def _frozen_key(self, run_ids: Sequence[str]) -> tuple[tuple[str, int], ...] | None:
        """(run_id, shown attempt) of every run if none of them is queued or running (or lost), else None."""
        with self._lock:
            known = [self._known.get(r) for r in run_ids]
        if any(k is None or k[1] not in FROZEN for k in known):
            return None
        return tuple((r, k[0]) for r, k in zip(run_ids, known, strict=True) if k is not None)

    # -- registry

    def sweeps(self, limit: int | None = 500, *, archived: bool | None = False) -> pd.DataFrame:
        """Newest first; archived ones left out (archived=False), alone (True) or with the rest (None)."""
        return sweeps_frame(self.registry.list_sweeps(limit=limit, archived=archived))

    def sweep(self, sweep_id: str) -> dict[str, Any] | None:
        return self.registry.get_sweep(sweep_id)

    def runs(self, sweep_id: str) -> pd.DataFrame:
        """Runs of a sweep (storage.dashboard_reads.RUN_TABLE_COLUMNS), re-read from the registry only when its
        fingerprint changed."""
        from storage.dashboard_reads import runs_table

        key = ("runs", sweep_id, self.fingerprint(sweep_id))

        def read() -> pd.DataFrame:
            frame = runs_table(self.registry, sweep_id)
            with self._lock:
                self._known.update(
                    zip(
                        frame["run_id"],
                        zip(frame["shown_attempt"].astype(int), frame["status"], strict=True),
                        strict=True,
                    )
                )
            return frame

        return self._cached(key, read)

    def last_steps(self, run_ids: Sequence[str]) -> pd.DataFrame | None:
        """run_id, last_step of the given runs (storage.progress.last_steps: one query, never cached —
        it moves with every points batch). None when another process holds the metric store (the
        Runs page then shows what the registry knows instead of failing)."""
        from storage.metric_store import StoreLocked
        from storage.progress import last_steps

        if not run_ids:
            return pd.DataFrame({"run_id": pd.Series(dtype=str), "last_step": pd.Series(dtype="int64")})
        try:
            return last_steps(self.settings, list(run_ids))
        except StoreLocked:
            return None

    # -- metric queries (storage.queries; see docs/contracts.md)

    def _queries(self) -> Any:
        from storage import queries

        return queries

    def heatmap(
        self,
        sweep_id: str,
        *,
        metric: str = "train_loss",
        stat: str = "final",
        agg: str = "mean",
        step: int | None = None,
        threshold: float | None = None,
    ) -> pd.DataFrame:
        fp = self.fingerprint(sweep_id)
        key = ("heatmap", sweep_id, fp, metric, stat, agg, step, threshold) if self.settled(fp) else None
        return self._cached(
            key,
            lambda: self._queries().heatmap(
                self.settings, sweep_id, metric=metric, stat=stat, agg=agg, step=step, threshold=threshold
            ),
        )

    def trajectories(
        self, run_ids: Sequence[str], *, metric: str = "train_loss", max_points: int = 500, log_x: bool = True
    ) -> pd.DataFrame:
        if not run_ids:
            return pd.DataFrame(columns=["run_id", "step", "value", "kind"])
        frozen = self._frozen_key(run_ids)
        key = None if frozen is None else ("traj", frozen, metric, max_points, log_x)
        return self._cached(
            key,
            lambda: self._queries().trajectories(
                self.settings, list(run_ids), metric=metric, max_points=max_points, log_x=log_x
            ),
        )

    def trajectories_many(
        self, run_ids: Sequence[str], metrics: Sequence[str], *, max_points: int = 500, log_x: bool = True
    ) -> dict[str, pd.DataFrame]:
        """metric -> the frame `trajectories(run_ids, metric=...)` gives, for several metrics of the same
        runs in one storage query (storage.queries_multi) instead of one query per metric."""
        columns = ["run_id", "step", "value", "kind"]
        if not run_ids or not metrics:
            return {m: pd.DataFrame(columns=columns) for m in metrics}
        frozen = self._frozen_key(run_ids)
        key = None if frozen is None else ("traj_many", frozen, tuple(metrics), max_points, log_x)

        def read() -> pd.DataFrame:
            from storage.queries_multi import trajectories_multi

            return trajectories_multi(self.settings, list(run_ids), list(metrics), max_points=max_points, log_x=log_x)

        frame = self._cached(key, read)
        parts = dict(tuple(frame.groupby("metric", sort=False)))
        return {m: (parts[m] if m in parts else frame.iloc[:0])[columns].reset_index(drop=True) for m in metrics}

    def overlay(
        self, run_ids: Sequence[str], *, metric: str = "train_loss", x: str = "t", max_points: int = 500
    ) -> pd.DataFrame:
        if not run_ids:
            return pd.DataFrame(columns=["run_id", "x", "value", "gamma", "eta"])
        frozen = self._frozen_key(run_ids)
        key = None if frozen is None else ("overlay", frozen, metric, x, max_points)
        return self._cached(
            key,
            lambda: self._queries().overlay(self.settings, list(run_ids), metric=metric, x=x, max_points=max_points),
        )

    def seed_bands(self, sweep_id: str, gamma: float, eta: float, metric: str = "train_loss") -> pd.DataFrame:
        fp = self.fingerprint(sweep_id)
        key = ("bands", sweep_id, fp, float(gamma), float(eta), metric) if self.settled(fp) else None
        return self._cached(key, lambda: self._queries().seed_bands(self.settings, sweep_id, gamma, eta, metric))


def points_budget(n_runs: int, *, total: int = 4000, most: int = 500, least: int = 20) -> int:
    """Points per run so that a figure holds a few thousand points whatever the number of runs."""
    if n_runs <= 0:
        return most
    return int(max(least, min(most, total // n_runs)))


def now() -> float:
    return time.time()
