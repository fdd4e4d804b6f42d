"""Read side for the dashboard: heatmap cells, downsampled trajectories, overlays, seed bands.

Every function takes `source` first: a Settings (the registry at settings.registry_url and this
process's metric store, or a short-lived read-only one) or a QuerySource(store, registry). Reads use
the calling thread's own DuckDB cursor, never a second read-write connect (DuckDB allows one
read-write process per file; inside it, threads need their own cursor).

Only the current attempt of each run is read; older attempts' points stay stored but are not shown.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from storage.expression import ExpressionError, compile_expression  # noqa: F401 - re-exported
from storage.metric_store import MetricStore, open_reader
from storage.registry import Registry, runs_frame
from storage.settings import Settings

STATS = ("final", "best", "at_step", "steps_to")
AGGS = ("mean", "median", "min")
NAMED_X = {
    "t": "t",
    "eta_t": "eta*t",
    "eta_t_over_gamma": "eta*t/gamma",
    "eta_t_over_gamma_2_over_L": "eta*t/gamma^(2/L)",
}
HEATMAP_COLUMNS = ["gamma", "eta", "value", "n_seeds", "n_done", "n_diverged", "n_running", "n_missing",
                   "cell_status"]


class QueryError(ValueError):
    """Bad query arguments (names the argument and what is allowed)."""


def higher_is_better(metric: str) -> bool:
    """Accuracies improve upward; losses, sharpness... are read as lower-is-better for `best`."""
    return metric.endswith("acc")


@dataclass
class QuerySource:
    store: MetricStore | duckdb.DuckDBPyConnection | None
    registry: Registry


_REGISTRIES: dict[str, Registry] = {}
_REG_LOCK = threading.Lock()


def _registry_for(url: str) -> Registry:
    with _REG_LOCK:
        if url not in _REGISTRIES:
            _REGISTRIES[url] = Registry(url)
        return _REGISTRIES[url]


@contextmanager
def _open(source: Settings | QuerySource) -> Iterator[tuple[duckdb.DuckDBPyConnection | None, Registry]]:
    if isinstance(source, QuerySource):
        store = source.store
        cur = store.cursor() if isinstance(store, MetricStore) else store
        yield cur, source.registry
        return
    if not isinstance(source, Settings):
        raise QueryError(f"source: must be Settings or QuerySource (got {type(source).__name__})")
    registry = _registry_for(source.registry_url)
    store, owned = open_reader(source.metrics_path)
    try:
        yield (store.cursor() if store is not None else None), registry
    finally:
        if owned and store is not None:
            store.close()


@contextmanager
def _registered(cur: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> Iterator[None]:
    """Expose an Arrow table to SQL under `name` on this thread's cursor for the duration."""
    cur.register(name, table)
    try:
        yield
    finally:
        cur.unregister(name)


def _selection(cur: duckdb.DuckDBPyConnection, runs: pd.DataFrame) -> pa.Table:
    """Arrow table (run_key, attempt, run_id) of the given runs (current attempt) that have points."""
    ids = pa.table({"run_id": pa.array(runs["run_id"].astype(str).tolist(), pa.string()),
                    "attempt": pa.array(runs["attempt"].astype("int64").tolist(), pa.int32())})
    try:
        with _registered(cur, "ids", ids):
            return _arrow(cur, "SELECT k.run_key, i.attempt, i.run_id FROM ids i JOIN run_keys k USING (run_id)")
    except duckdb.CatalogException:  # empty file, no tables yet
        return pa.table({"run_key": pa.array([], pa.int32()), "attempt": pa.array([], pa.int32()),
                         "run_id": pa.array([], pa.string())})


def _arrow(cur: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> pa.Table:
    """Run a parameterized query as a relation and fetch it as Arrow (no DB-API row copy)."""
    rel = cur.sql(sql, params=params)
    # duckdb >= 1.4 names it to_arrow_table(); older releases arrow()
    fetch = getattr(rel, "to_arrow_table", None) or rel.arrow
    table = fetch()
    return table.read_all() if isinstance(table, pa.RecordBatchReader) else table


def _frame(cur: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> pd.DataFrame:
    return _arrow(cur, sql, params).to_pandas()


# ----------------------------------------------------------------------------- heatmap


def _per_run_values(cur: duckdb.DuckDBPyConnection | None, runs: pd.DataFrame, metric: str, stat: str,
                    step: int | None, threshold: float | None) -> pd.Series:
    """run_id -> value (NaN when none) for the chosen statistic, current attempt only."""
    if cur is None or runs.empty:
        return pd.Series(np.nan, index=runs["run_id"], dtype=np.float64)
    with _registered(cur, "sel", _selection(cur, runs)):
        df = _stat_frame(cur, metric, stat, step, threshold)
    values = pd.Series(np.nan, index=runs["run_id"], dtype=np.float64)
    if not df.empty:
        values.loc[df["run_id"].to_numpy()] = df["value"].to_numpy(dtype=np.float64)
    return values


def _stat_frame(cur: duckdb.DuckDBPyConnection, metric: str, stat: str, step: int | None,
                threshold: float | None) -> pd.DataFrame:
    if stat in ("final", "best"):
        col = "last_value" if stat == "final" else ("max_value" if higher_is_better(metric) else "min_value")
        sql = (f"SELECT s.run_id, m.{col} AS value FROM sel s JOIN summaries m "
               "ON m.run_key = s.run_key AND m.attempt = s.attempt WHERE m.metric = ?")
        df = _frame(cur, sql, [metric])
    elif stat == "at_step":
        # the last logged value at or before `step` (eval metrics are logged on a sparse schedule)
        sql = ("SELECT s.run_id, arg_max(p.value, p.step) AS value FROM points p JOIN sel s "
               "ON p.run_key = s.run_key AND p.attempt = s.attempt WHERE p.metric = ? AND p.step <= ? "
               "GROUP BY s.run_id")
        df = _frame(cur, sql, [metric, int(step or 0)])
    else:  # steps_to: first step reaching the threshold; +inf if never reached
        cmp = ">=" if higher_is_better(metric) else "<="
        sql = (f"SELECT s.run_id, min(p.step)::DOUBLE AS value FROM points p JOIN sel s "
               f"ON p.run_key = s.run_key AND p.attempt = s.attempt WHERE p.metric = ? AND p.value {cmp} ? "
               "GROUP BY s.run_id")
        df = _frame(cur, sql, [metric, float(threshold or 0.0)])
    return df


def heatmap(source: Settings | QuerySource, sweep_id: str, metric: str = "train_loss", stat: str = "final",
            agg: str = "mean", step: int | None = None, threshold: float | None = None) -> pd.DataFrame:
    """One row per (γ, η) of the sweep, value aggregated over seeds.

    Per seed: final -> last logged value; best -> min (max for *acc); at_step -> last value at or before
    `step`; steps_to -> first step reaching `threshold` (+inf for a finished run that never did).
    A seed counts toward `value` only if its number is final and finite: for final/best the run must
    be `done`; for at_step/steps_to any run whose series answers the question counts (a run that
    diverged after step t has a value at t). Others are counted, never scored: n_diverged (diverged,
    or a non-finite value), n_running (queued/running), n_missing (failed/lost/cancelled/no data).
    cell_status: ok (some value) > diverged > running > missing.
    """
    if stat not in STATS:
        raise QueryError(f"stat: must be one of {', '.join(STATS)} (got {stat!r})")
    if agg not in AGGS:
        raise QueryError(f"agg: must be one of {', '.join(AGGS)} (got {agg!r})")
    if stat == "at_step" and (step is None or isinstance(step, bool) or not isinstance(step, int | np.integer)
                              or step < 0):
        raise QueryError(f"step: stat='at_step' needs an integer step >= 0 (got {step!r})")
    if stat == "steps_to" and (threshold is None or not np.isfinite(threshold)):
        raise QueryError(f"threshold: stat='steps_to' needs a finite threshold (got {threshold!r})")
    with _open(source) as (cur, registry):
        runs = runs_frame(registry, sweep_id=sweep_id)
        if runs.empty:
            return pd.DataFrame(columns=HEATMAP_COLUMNS)
        values = _per_run_values(cur, runs, metric, stat, step, threshold)
    v = values.reindex(runs["run_id"]).to_numpy(dtype=np.float64)  # (R,)
    status = runs["status"].to_numpy()
    finished = np.isin(status, ("done", "diverged", "cancelled", "failed", "lost"))
    if stat == "steps_to":
        v = np.where(np.isnan(v) & (status == "done"), np.inf, v)  # finished, never reached
        valued = ~np.isnan(v)
    elif stat == "at_step":
        valued = np.isfinite(v)
    else:
        valued = (status == "done") & np.isfinite(v)
    diverged = ~valued & ((status == "diverged") | (finished & np.isinf(v)))
    running = ~valued & ~diverged & np.isin(status, ("queued", "running"))
    missing = ~valued & ~diverged & ~running
    frame = pd.DataFrame({
        "gamma": runs["gamma"].to_numpy(dtype=np.float64), "eta": runs["eta"].to_numpy(dtype=np.float64),
        "v": np.where(valued, v, np.nan), "valued": valued, "done": status == "done", "diverged": diverged,
        "running": running, "missing": missing,
    })
    grouped = frame.groupby(["gamma", "eta"], sort=True)
    out = grouped.agg(value=("v", agg), n_seeds=("v", "size"), n_valued=("valued", "sum"), n_done=("done", "sum"),
                      n_diverged=("diverged", "sum"), n_running=("running", "sum"),
                      n_missing=("missing", "sum")).reset_index()
    cell = np.select(
        [out["n_valued"] > 0, out["n_diverged"] > 0, out["n_running"] > 0],
        ["ok", "diverged", "running"], default="missing")
    out["cell_status"] = cell
    out.loc[out["n_valued"] == 0, "value"] = np.nan
    for col in ("n_seeds", "n_done", "n_diverged", "n_running", "n_missing"):
        out[col] = out[col].astype("int64")
    return out[HEATMAP_COLUMNS]


# ----------------------------------------------------------------------------- trajectories

_M4_SQL = """
WITH p AS (
    SELECT s.run_id, p.step, p.value FROM points p JOIN sel s ON p.run_key = s.run_key AND p.attempt = s.attempt
    WHERE p.metric = ? AND isfinite(p.value)
), r AS (
    SELECT run_id, count(*) AS n, min({xf}) AS x0, max({xf}) AS x1 FROM p GROUP BY run_id
), b AS (
    SELECT p.run_id, p.step, p.value, r.n,
           CASE WHEN r.n <= ? THEN p.step
                ELSE least(? - 1, floor(? * ({xf} - r.x0) / (r.x1 - r.x0 + 1e-12)))::BIGINT END AS bucket
    FROM p JOIN r USING (run_id)
)
SELECT run_id, bucket, count(*) AS c, max(n) AS n,
       min(step) AS first_step, arg_min(value, step) AS first_value,
       max(step) AS last_step, arg_max(value, step) AS last_value,
       arg_min(step, value) AS min_step, min(value) AS min_value,
       arg_max(step, value) AS max_step, max(value) AS max_value
FROM b GROUP BY run_id, bucket
"""


def _series(cur: duckdb.DuckDBPyConnection | None, runs: pd.DataFrame, metric: str, max_points: int,
            log_x: bool) -> pd.DataFrame:
    """M4 downsampling in DuckDB: per run and bucket keep first, last, min, max (<= max_points per run)."""
    empty = pd.DataFrame({"run_id": pd.Series(dtype=str), "step": pd.Series(dtype="int64"),
                          "value": pd.Series(dtype=np.float64), "kind": pd.Series(dtype=str)})
    if cur is None or runs.empty:
        return empty
    with _registered(cur, "sel", _selection(cur, runs)):
        return _m4(cur, metric, max_points, log_x, empty)


def _m4(cur: duckdb.DuckDBPyConnection, metric: str, max_points: int, log_x: bool,
        empty: pd.DataFrame) -> pd.DataFrame:
    buckets = max(1, max_points // 4)
    xf = "ln(1 + step)" if log_x else "step::DOUBLE"
    agg = _frame(cur, _M4_SQL.format(xf=xf), [metric, max_points, buckets, buckets])
    parts = []
    if not agg.empty:
        compressed = (agg["n"] > max_points).to_numpy()
        for name, kind in (("first", "point"), ("last", "point"), ("min", "min"), ("max", "max")):
            part = pd.DataFrame({"run_id": agg["run_id"], "step": agg[f"{name}_step"],
                                 "value": agg[f"{name}_value"],
                                 "kind": np.where(compressed, kind, "point"),
                                 "priority": 0 if kind == "point" else 1})
            parts.append(part)
    # non-finite values are kept, as they were logged: the first one of each run
    nonfinite = _frame(
        cur,
        "SELECT s.run_id, min(p.step) AS step, arg_min(p.value, p.step) AS value FROM points p JOIN sel s "
        "ON p.run_key = s.run_key AND p.attempt = s.attempt WHERE p.metric = ? "
        "AND (p.value IS NULL OR NOT isfinite(p.value)) GROUP BY s.run_id", [metric])
    if not nonfinite.empty:
        nonfinite["kind"] = "nan"
        nonfinite["priority"] = 2
        parts.append(nonfinite)
    if not parts:
        return empty
    out = pd.concat(parts, ignore_index=True)
    out = (out.sort_values(["run_id", "step", "priority"]).drop_duplicates(["run_id", "step"], keep="last")
           .drop(columns="priority"))
    out["step"] = out["step"].astype("int64")
    out["value"] = out["value"].astype(np.float64)
    return out


def trajectories(source: Settings | QuerySource, run_ids: Sequence[str], metric: str = "train_loss",
                 max_points: int = 500, log_x: bool = True) -> pd.DataFrame:
    """At most ~max_points rows per run (M4 buckets: first/last as `point`, extremes as `min`/`max`,
    buckets spaced on log(1+step) when log_x), plus a `nan` row at the first non-finite value and a
    `diverged` row at the registry's diverged_step. Columns run_id, step, value, kind; runs in the
    order asked, steps ascending."""
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 4:
        raise QueryError(f"max_points: must be an integer >= 4 (got {max_points!r})")
    run_ids = list(dict.fromkeys(run_ids))
    with _open(source) as (cur, registry):
        runs = runs_frame(registry, run_ids=run_ids)
        out = _series(cur, runs, metric, max_points, log_x)
        markers = runs[runs["diverged_step"].notna()]
        if not markers.empty:
            logged = out.set_index(["run_id", "step"])["value"] if not out.empty else pd.Series(dtype=float)
            rows = []
            for rid, dstep in zip(markers["run_id"], markers["diverged_step"].astype("int64"), strict=True):
                value = logged.get((rid, dstep), np.nan) if len(logged) else np.nan
                rows.append({"run_id": rid, "step": int(dstep), "value": float(value), "kind": "diverged"})
            out = pd.concat([out, pd.DataFrame(rows)], ignore_index=True)
    order = {rid: i for i, rid in enumerate(run_ids)}
    out = out.assign(_o=out["run_id"].map(order)).sort_values(["_o", "step"], kind="stable").drop(columns="_o")
    return out.reset_index(drop=True)[["run_id", "step", "value", "kind"]]


# ----------------------------------------------------------------------------- overlays


def overlay(source: Settings | QuerySource, run_ids: Sequence[str], metric: str = "train_loss", x: str = "t",
            max_points: int = 500, log_x: bool = True) -> pd.DataFrame:
    """Trajectories with a per-run x: t, eta_t (η·t), eta_t_over_gamma (η·t/γ),
    eta_t_over_gamma_2_over_L (η·t/γ^(2/L)) or an expression over t, eta, gamma, L, N
    (storage.expression; never eval). t is the 0-based step. Columns run_id, x, value, gamma, eta, kind."""
    fn = compile_expression(NAMED_X.get(x, x))  # ExpressionError for anything outside the grammar
    series = trajectories(source, run_ids, metric=metric, max_points=max_points, log_x=log_x)
    with _open(source) as (_cur, registry):
        runs = runs_frame(registry, run_ids=list(run_ids)).set_index("run_id")
    if series.empty:
        return pd.DataFrame(columns=["run_id", "x", "value", "gamma", "eta", "kind"])
    per = runs.reindex(series["run_id"])
    env = {"t": series["step"].to_numpy(dtype=np.float64), "eta": per["eta"].to_numpy(dtype=np.float64),
           "gamma": per["gamma"].to_numpy(dtype=np.float64),
           "L": per["depth"].to_numpy(dtype=np.float64), "N": per["width"].to_numpy(dtype=np.float64)}
    xs = fn(env)  # (P,)
    xs = np.broadcast_to(xs, series["step"].shape)
    return pd.DataFrame({"run_id": series["run_id"].to_numpy(), "x": xs, "value": series["value"].to_numpy(),
                         "gamma": env["gamma"], "eta": env["eta"], "kind": series["kind"].to_numpy()})


# ----------------------------------------------------------------------------- seed bands


def seed_bands(source: Settings | QuerySource, sweep_id: str, gamma: float, eta: float,
               metric: str = "train_loss", max_points: int = 1000) -> pd.DataFrame:
    """Across the seeds of one (γ, η) cell, per step: mean, std (sample), min, max and n (finite values
    at that step). Steps are thinned to at most max_points, log-spaced, so long runs stay light."""
    with _open(source) as (cur, registry):
        runs = runs_frame(registry, sweep_id=sweep_id)
        cell = runs[np.isclose(runs["gamma"].astype(float), float(gamma), rtol=1e-9, atol=0)
                    & np.isclose(runs["eta"].astype(float), float(eta), rtol=1e-9, atol=0)]
        cols = ["step", "mean", "std", "min", "max", "n"]
        if cur is None or cell.empty:
            return pd.DataFrame(columns=cols)
        with _registered(cur, "sel", _selection(cur, cell)):
            out = _bands(cur, metric, max_points)
    out["n"] = out["n"].astype("int64")
    return out[cols]


def _bands(cur: duckdb.DuckDBPyConnection, metric: str, max_points: int) -> pd.DataFrame:
    """Seed statistics per step over the registered `sel` runs, steps thinned log-spaced."""
    steps = _frame(
        cur,
        "SELECT DISTINCT p.step FROM points p JOIN sel s ON p.run_key = s.run_key AND p.attempt = s.attempt "
        "WHERE p.metric = ? ORDER BY 1", [metric])["step"].to_numpy()
    if len(steps) > max_points:
        grid = np.unique(np.round(np.geomspace(1, len(steps), max_points)).astype(np.int64) - 1)
        steps = steps[grid]
    keep = pa.table({"step": pa.array(steps.astype(np.int64), pa.int64())})
    finite = "FILTER (WHERE isfinite(p.value))"
    with _registered(cur, "keep", keep):
        return _frame(
            cur,
            f"SELECT p.step, avg(p.value) {finite} AS mean, stddev_samp(p.value) {finite} AS std, "
            f"min(p.value) {finite} AS min, max(p.value) {finite} AS max, count(*) {finite} AS n "
            "FROM points p JOIN sel s ON p.run_key = s.run_key AND p.attempt = s.attempt "
            "SEMI JOIN keep k ON p.step = k.step WHERE p.metric = ? GROUP BY p.step ORDER BY p.step",
            [metric])
