"""Read side for the dashboard: heatmap cells, downsampled trajectories, overlays, seed bands.

Every function takes `source` first: a Settings (the registry at settings.registry_url and this
process's metric store, or a short-lived read-only one) or a QuerySource(store, registry). Reads use
the calling thread's own DuckDB cursor, never a second read-write connect (DuckDB allows one
read-write process per file; inside it, threads need their own cursor).

Each run is read at its *shown* attempt (storage.registry.VIEW_COLUMNS): its newest attempt that
finished done or diverged, until a newer one finishes done or diverged too; with no such result, its
current attempt (live while it trains). A rerun that is running, or was cancelled, failed or lost, thus
never hides a finished result; the heatmap counts those cells' seeds in `n_newer`. Points of every
attempt stay stored.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pyarrow as pa

from storage.expression import ExpressionError, compile_expression  # noqa: F401 - re-exported
from storage.metric_store import MetricStore, open_reader, read_run_arrays
from storage.registry import Registry, runs_columns, runs_frame
from storage.settings import Settings

if TYPE_CHECKING:  # imported where a frame is made: `sweep --wait` reads progress without it (0.2 s)
    import pandas as pd

STATS = ("final", "best", "tail", "at_step", "steps_to")
# tail: the mean over the last 10 % of a run's logged steps, as engine.analysis.tail_steps counts them
# (the same number as the run summary's tail_train_loss; a test holds the two equal)
TAIL_FRACTION = 0.1
AGGS = ("mean", "median", "min")
NAMED_X = {
    "t": "t",
    "eta_t": "eta*t",
    "eta_t_over_gamma": "eta*t/gamma",
    "eta_t_over_gamma_2_over_L": "eta*t/gamma^(2/L)",
}
log = logging.getLogger(__name__)
HEATMAP_COLUMNS = ["gamma", "eta", "value", "n_seeds", "n_done", "n_diverged", "n_running", "n_missing",
                   "cell_status", "live_value", "live_step", "n_newer", "n_not_reached", "n_cancelled"]


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
    """(reader, registry) for one query context. A MetricStore gives a fresh reader cursor, closed on
    exit: a query that fails or is interrupted mid-fetch cannot leave an unfinished result behind on a
    connection that later queries of this thread would reuse (storage.metric_store.MetricStore.cursor)."""
    if isinstance(source, QuerySource):
        store = source.store
        if isinstance(store, MetricStore):
            with store.reader() as cur:
                yield cur, source.registry
        else:
            yield store, source.registry
        return
    if not isinstance(source, Settings):
        raise QueryError(f"source: must be Settings or QuerySource (got {type(source).__name__})")
    registry = _registry_for(source.registry_url)
    store, owned = open_reader(source.metrics_path)
    try:
        if store is None:
            yield None, registry
        else:
            with store.reader() as cur:
                yield cur, registry
    finally:
        if owned and store is not None:
            store.close()


@contextmanager
def _registered(cur: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> Iterator[None]:
    """Expose an Arrow table to SQL under `name` on this cursor for the duration.

    The unregister can itself fail when the query left a result open (DuckDB refuses other work on
    such a connection); it must never replace the query's own exception, and since the cursor is
    closed at the end of the query context the view goes with it anyway."""
    cur.register(name, table)
    try:
        yield
    finally:
        try:
            cur.unregister(name)
        except duckdb.Error as exc:
            log.debug("unregister %s skipped (%s); the cursor is closed after the query", name, exc)


SHOWN_FIELDS = ("run_id", "shown_attempt", "shown_diverged_step")


def _want(cols: dict[str, list[Any]], run_ids: Sequence[str]) -> pa.Table:
    """(run_id, o, attempt, diverged_step) of runs_columns(..., fields=SHOWN_FIELDS): the shown attempt
    of each run and its divergence step, `o` the position asked."""
    order = {rid: i for i, rid in enumerate(run_ids)}
    return pa.table({
        "run_id": pa.array(cols["run_id"], pa.string()),
        "o": pa.array([order[r] for r in cols["run_id"]], pa.int32()),
        "attempt": pa.array(cols["shown_attempt"], pa.int32()),
        "diverged_step": pa.array(cols["shown_diverged_step"], pa.int64()),
    })


def _selection(cur: duckdb.DuckDBPyConnection, runs: pd.DataFrame) -> pa.Table:
    """Arrow table (run_key, attempt, run_id) of the given runs (the `attempt` column's) that have points."""
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


_EMPTY_STORE_DDL = [
    "CREATE TABLE run_keys (run_key INTEGER, run_id VARCHAR)",
    "CREATE TABLE points (run_key INTEGER, attempt INTEGER, seq INTEGER, step BIGINT, metric VARCHAR, "
    "value DOUBLE)",
    "CREATE TABLE summaries (run_key INTEGER, attempt INTEGER, metric VARCHAR, n BIGINT, last_step BIGINT, "
    "last_value DOUBLE, min_value DOUBLE, min_step BIGINT, max_value DOUBLE, max_step BIGINT, "
    "first_nonfinite_step BIGINT)",
]


def _empty_cursor() -> duckdb.DuckDBPyConnection:
    """An in-memory store with the tables and no rows: no metrics file yet reads as 'no data'."""
    conn = duckdb.connect()
    for ddl in _EMPTY_STORE_DDL:
        conn.execute(ddl)
    return conn


def _values_sql(metric: str, stat: str, step: int | None, threshold: float | None) -> tuple[str, list[Any]]:
    """SQL of (run_id, v, s) over the registered `runs_in` (current attempt): the per-seed statistic v
    and, for final/best, the last logged step s (how far a running run has got; NULL otherwise)."""
    join = "JOIN k ON {t}.run_key = k.run_key AND {t}.attempt = k.attempt"
    if stat in ("final", "best"):
        col = "last_value" if stat == "final" else ("max_value" if higher_is_better(metric) else "min_value")
        return (f"SELECT k.run_id, m.{col} AS v, m.last_step AS s FROM summaries m {join.format(t='m')} "
                "WHERE m.metric = ?", [metric])
    if stat == "tail":  # s: the last logged step, so a running run's provisional tail shows live
        return (f"SELECT k.run_id, avg(p.value) AS v, max(m.last_step) AS s FROM points p {join.format(t='p')} "
                "JOIN summaries m ON m.run_key = p.run_key AND m.attempt = p.attempt AND m.metric = p.metric "
                "WHERE p.metric = ? AND p.step >= m.last_step + 1 - greatest(1, ceil(? * (m.last_step + 1) - 1e-9)) "
                "GROUP BY k.run_id", [metric, TAIL_FRACTION])
    if stat == "at_step":  # the last logged value at or before `step` (eval metrics are sparse)
        return (f"SELECT k.run_id, arg_max(p.value, p.step) AS v, NULL::BIGINT AS s FROM points p "
                f"{join.format(t='p')} WHERE p.metric = ? AND p.step <= ? GROUP BY k.run_id", [metric, int(step or 0)])
    cmp = ">=" if higher_is_better(metric) else "<="
    return (f"SELECT k.run_id, min(p.step)::DOUBLE AS v, NULL::BIGINT AS s FROM points p {join.format(t='p')} "
            f"WHERE p.metric = ? AND p.value {cmp} ? GROUP BY k.run_id", [metric, float(threshold or 0.0)])


_HEATMAP_SQL = """
WITH k AS (SELECT r.*, rk.run_key FROM runs_in r LEFT JOIN run_keys rk USING (run_id)),
vals AS ({values}),
c AS (
    SELECT k.gamma, k.eta, k.status, k.newer, vals.v AS raw, vals.s AS s,
           CASE WHEN {steps_to} AND vals.v IS NULL AND k.status = 'done' THEN 'inf'::DOUBLE ELSE vals.v END AS v
    FROM k LEFT JOIN vals USING (run_id)
),
cls AS (
    SELECT *, CASE WHEN {steps_to} THEN v IS NOT NULL
                   WHEN {at_step} THEN v IS NOT NULL AND isfinite(v)
                   ELSE status = 'done' AND v IS NOT NULL AND isfinite(v) END AS valued
    FROM c
),
cls2 AS (
    SELECT *, NOT valued AND (status = 'diverged' OR (status IN ('done', 'failed', 'cancelled', 'lost')
                                                      AND raw IS NOT NULL AND isinf(raw))) AS diverged,
              NOT valued AND status IN ('queued', 'running') AND s IS NOT NULL AND isfinite(v) AS live
    FROM cls
)
SELECT gamma, eta, {agg}(v) FILTER (WHERE valued) AS value, count(*) AS n_seeds,
       count(*) FILTER (WHERE valued) AS n_valued, count(*) FILTER (WHERE status = 'done') AS n_done,
       count(*) FILTER (WHERE diverged) AS n_diverged,
       count(*) FILTER (WHERE NOT valued AND NOT diverged AND status IN ('queued', 'running')) AS n_running,
       count(*) FILTER (WHERE NOT valued AND NOT diverged AND status NOT IN ('queued', 'running')) AS n_missing,
       count(*) FILTER (WHERE NOT valued AND NOT diverged AND status = 'cancelled') AS n_cancelled,
       count(*) FILTER (WHERE valued AND isinf(v)) AS n_not_reached,
       {agg}(v) FILTER (WHERE live) AS live_value, min(s) FILTER (WHERE live) AS live_step,
       count(*) FILTER (WHERE newer IN ('queued', 'running')) AS n_newer
FROM cls2 GROUP BY gamma, eta ORDER BY gamma, eta
"""
_AGG_SQL = {"mean": "avg", "median": "median", "min": "min"}


def heatmap(source: Settings | QuerySource, sweep_id: str, metric: str = "train_loss", stat: str = "final",
            agg: str = "mean", step: int | None = None, threshold: float | None = None) -> pd.DataFrame:
    """One row per (γ, η) of the sweep, value aggregated over seeds (one DuckDB query).

    Per seed: final -> last logged value; best -> min (max for *acc); tail -> mean over the last 10 % of
    the logged steps (one batch's loss is noisy; the default of the portrait); at_step -> last value at or before
    `step`; steps_to -> first step reaching `threshold` (+inf for a finished run that never did).
    A seed counts toward `value` only if its number is final and finite: for final/best/tail the run must
    be `done`; for at_step/steps_to any run whose series answers the question counts (a run that
    diverged after step t has a value at t). Others are counted, never scored: n_diverged (diverged,
    or an infinite value), n_running (queued/running), n_missing (failed/lost/cancelled/no data).
    cell_status: ok (a finite value) > not_reached (steps_to: the value is +inf, i.e. (a) seed finished
    without reaching the threshold) > diverged > running > cancelled (every missing seed was cancelled)
    > missing. n_not_reached: seeds valued +inf (steps_to only); n_cancelled: of n_missing, cancelled.
    live_value, live_step: for final/best, the provisional statistic of the seeds still training
    (aggregated like `value`) and the least step they have logged — so a portrait fills in while a
    sweep runs; NaN where no running seed has logged a finite value yet.
    Each run counts at its shown attempt (module docstring); n_newer: seeds shown at an earlier
    finished attempt while a newer attempt of theirs is queued or running (a rerun in progress).
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
    import pandas as pd

    with _open(source) as (cur, registry):
        cols = runs_columns(registry, sweep_id=sweep_id,
                            fields=("run_id", "gamma", "eta", "shown_status", "shown_attempt", "newer_status"))
        if not cols["run_id"]:
            return pd.DataFrame(columns=HEATMAP_COLUMNS)
        runs_in = pa.table({
            "run_id": pa.array(cols["run_id"], pa.string()), "gamma": pa.array(cols["gamma"], pa.float64()),
            "eta": pa.array(cols["eta"], pa.float64()), "status": pa.array(cols["shown_status"], pa.string()),
            "attempt": pa.array(cols["shown_attempt"], pa.int32()),
            "newer": pa.array(cols["newer_status"], pa.string()),
        })
        values_sql, params = _values_sql(metric, stat, step, threshold)
        sql = _HEATMAP_SQL.format(values=values_sql, agg=_AGG_SQL[agg],
                                  steps_to=str(stat == "steps_to").upper(), at_step=str(stat == "at_step").upper())
        reader = cur if cur is not None else _empty_cursor()
        try:
            with _registered(reader, "runs_in", runs_in):
                out = _frame(reader, sql, params)
        finally:
            if cur is None:
                reader.close()
    valued = out["n_valued"] > 0
    reached = np.isfinite(out["value"].astype("float64"))
    cancelled = (out["n_cancelled"] > 0) & (out["n_cancelled"] == out["n_missing"])
    out["cell_status"] = np.select(
        [valued & reached, valued, out["n_diverged"] > 0, out["n_running"] > 0, cancelled],
        ["ok", "not_reached", "diverged", "running", "cancelled"], default="missing")
    for col in ("n_seeds", "n_done", "n_diverged", "n_running", "n_missing", "n_newer", "n_not_reached",
                "n_cancelled"):
        out[col] = out[col].astype("int64")
    out["value"] = out["value"].astype("float64")
    out["live_value"] = out["live_value"].astype("float64")
    out["live_step"] = out["live_step"].astype("float64")  # NaN where no seed is live
    return out[HEATMAP_COLUMNS]


# ----------------------------------------------------------------------------- trajectories

# M4 downsampling per (run, metric): `want` holds the runs (o: their order, each one's shown attempt and
# diverged_step), `mets` the metrics asked (mo: their order). Per bucket of x (log(1+step) or step) the
# first and last points and the extremes; every run and metric with at most max_points points as is.
_TRAJ_SQL = """
WITH k AS (SELECT w.run_id, w.o, w.diverged_step, rk.run_key, w.attempt
           FROM want w LEFT JOIN run_keys rk USING (run_id)),
p_all AS (
    SELECT k.run_id, p.metric, p.step, p.value
    FROM points p JOIN k ON p.run_key = k.run_key AND p.attempt = k.attempt
    WHERE p.metric IN (SELECT metric FROM mets)
),
p AS (SELECT * FROM p_all WHERE isfinite(value)),
r AS (SELECT run_id, metric, count(*) AS n, min({xf}) AS x0, max({xf}) AS x1 FROM p GROUP BY run_id, metric),
b AS (
    SELECT p.run_id, p.metric, p.step, p.value, r.n,
           CASE WHEN r.n <= ? THEN p.step
                ELSE least(? - 1, floor(? * ({xf} - r.x0) / (r.x1 - r.x0 + 1e-12)))::BIGINT END AS bucket
    FROM p JOIN r USING (run_id, metric)
),
agg AS (
    SELECT run_id, metric, max(n) > ? AS squeezed,
           min(step) AS fs, arg_min(value, step) AS fv, max(step) AS ls, arg_max(value, step) AS lv,
           arg_min(step, value) AS mins, min(value) AS minv, arg_max(step, value) AS maxs, max(value) AS maxv
    FROM b GROUP BY run_id, metric, bucket
),
u AS (
    SELECT run_id, metric, fs AS step, fv AS value, 'point' AS kind, 0 AS pr FROM agg
    UNION ALL SELECT run_id, metric, ls, lv, 'point', 0 FROM agg
    UNION ALL SELECT run_id, metric, mins, minv, CASE WHEN squeezed THEN 'min' ELSE 'point' END, 1 FROM agg
    UNION ALL SELECT run_id, metric, maxs, maxv, CASE WHEN squeezed THEN 'max' ELSE 'point' END, 1 FROM agg
    -- non-finite values are kept as logged: the first one of each run and metric
    UNION ALL SELECT run_id, metric, min(step), arg_min(value, step), 'nan', 2 FROM p_all
              WHERE value IS NULL OR NOT isfinite(value) GROUP BY run_id, metric
),
line AS (SELECT run_id, metric, step, arg_max(value, pr) AS value, arg_max(kind, pr) AS kind
         FROM u GROUP BY run_id, metric, step),
marks AS (
    SELECT k.run_id, m.metric, k.diverged_step AS step, any_value(pa.value) AS value, 'diverged' AS kind
    FROM k CROSS JOIN mets m
    LEFT JOIN p_all pa ON pa.run_id = k.run_id AND pa.metric = m.metric AND pa.step = k.diverged_step
    WHERE k.diverged_step IS NOT NULL GROUP BY k.run_id, m.metric, k.diverged_step
),
allrows AS (SELECT *, 0 AS last FROM line UNION ALL SELECT *, 1 FROM marks)
SELECT a.run_id, a.metric, a.step, a.value, a.kind
FROM allrows a JOIN k USING (run_id) JOIN mets m ON m.metric = a.metric
ORDER BY m.mo, k.o, a.step, a.last
"""


def trajectories(source: Settings | QuerySource, run_ids: Sequence[str], metric: str = "train_loss",
                 max_points: int = 500, log_x: bool = True) -> pd.DataFrame:
    """At most ~max_points rows per run (M4 buckets: first/last as `point`, extremes as `min`/`max`,
    buckets spaced on log(1+step) when log_x), plus a `nan` row at the first non-finite value and a
    `diverged` row at the registry's diverged_step. Columns run_id, step, value, kind; runs in the
    order asked, steps ascending. One DuckDB query does the bucketing."""
    return trajectory_rows(source, run_ids, [metric], max_points, log_x)[["run_id", "step", "value", "kind"]]


def run_arrays(source: Settings | QuerySource, run_ids: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """run_id -> {name: float32 array}: the final-function snapshot (storage.run_arrays) of each run's
    shown attempt (module docstring). Runs without one (not asked for, not done) are left out."""
    run_ids = list(dict.fromkeys(run_ids))
    with _open(source) as (cur, registry):
        cols = runs_columns(registry, run_ids=run_ids, fields=("run_id", "shown_attempt"))
        if cur is None or not cols["run_id"]:
            return {}
        return read_run_arrays(cur, dict(zip(cols["run_id"], cols["shown_attempt"], strict=True)))


TRAJECTORY_COLUMNS = ["run_id", "metric", "step", "value", "kind"]


def trajectory_rows(source: Settings | QuerySource, run_ids: Sequence[str], metrics: Sequence[str],
                    max_points: int = 500, log_x: bool = True) -> pd.DataFrame:
    """TRAJECTORY_COLUMNS: `trajectories` of each metric (in the order asked, each metric's rows
    together), all in one query (_TRAJ_SQL)."""
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 4:
        raise QueryError(f"max_points: must be an integer >= 4 (got {max_points!r})")
    import pandas as pd

    run_ids = list(dict.fromkeys(run_ids))
    metrics = list(dict.fromkeys(str(m) for m in metrics))
    empty = pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
        TRAJECTORY_COLUMNS, (str, str, "int64", "float64", str), strict=True)})
    if not metrics:
        return empty
    with _open(source) as (cur, registry):
        cols = runs_columns(registry, run_ids=run_ids, fields=SHOWN_FIELDS)  # each run's shown attempt
        if cur is None or not cols["run_id"]:
            return empty
        want = _want(cols, run_ids)
        mets = pa.table({"metric": pa.array(metrics, pa.string()), "mo": pa.array(range(len(metrics)), pa.int32())})
        buckets = max(1, max_points // 4)
        xf = "ln(1 + step)" if log_x else "step::DOUBLE"
        with _registered(cur, "want", want), _registered(cur, "mets", mets):
            out = _frame(cur, _TRAJ_SQL.format(xf=xf), [max_points, buckets, buckets, max_points])
    out["step"] = out["step"].astype("int64")
    out["value"] = out["value"].astype("float64")
    return out[TRAJECTORY_COLUMNS]


# ----------------------------------------------------------------------------- overlays


def overlay(source: Settings | QuerySource, run_ids: Sequence[str], metric: str = "train_loss", x: str = "t",
            max_points: int = 500, log_x: bool = True) -> pd.DataFrame:
    """Trajectories with a per-run x: t, eta_t (η·t), eta_t_over_gamma (η·t/γ),
    eta_t_over_gamma_2_over_L (η·t/γ^(2/L)) or an expression over t, eta, gamma, L, N
    (storage.expression; never eval). t is the 0-based step. Columns run_id, x, value, gamma, eta, kind."""
    import pandas as pd

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
    import pandas as pd

    with _open(source) as (cur, registry):
        runs = pd.DataFrame(runs_columns(registry, sweep_id=sweep_id, fields=("run_id", "gamma", "eta",
                                                                              "shown_attempt")))
        runs = runs.rename(columns={"shown_attempt": "attempt"})  # the attempt shown (module docstring)
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
