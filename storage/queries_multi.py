"""Several metrics' trajectories of the same runs in one DuckDB query.

`storage.queries.trajectories` reads one metric per call; a page that shows loss, alignment,
sharpness and per-layer movement of the same runs (Diagnostics) would scan the points table once
per metric. `trajectories_multi` gives, for every (run, metric), exactly the rows
`storage.queries.trajectories(source, run_ids, metric, max_points, log_x)` gives, in one query.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import pyarrow as pa

from storage.queries import SHOWN_FIELDS, QueryError, QuerySource, _frame, _open, _registered, _want
from storage.registry import runs_columns
from storage.settings import Settings

COLUMNS = ["run_id", "metric", "step", "value", "kind"]

# storage.queries._TRAJ_SQL with every partition by run_id also by metric (`mets`: the metrics asked).
_TRAJ_MULTI_SQL = """
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


def trajectories_multi(
    source: Settings | QuerySource,
    run_ids: Sequence[str],
    metrics: Sequence[str],
    max_points: int = 500,
    log_x: bool = True,
) -> pd.DataFrame:
    """Columns run_id, metric, step, value, kind: for each metric (in the order asked) the rows of
    storage.queries.trajectories for that metric (runs in the order asked, steps ascending)."""
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 4:
        raise QueryError(f"max_points: must be an integer >= 4 (got {max_points!r})")
    run_ids = list(dict.fromkeys(run_ids))
    metrics = list(dict.fromkeys(str(m) for m in metrics))
    empty = pd.DataFrame(
        {c: pd.Series(dtype=t) for c, t in zip(COLUMNS, (str, str, "int64", "float64", str), strict=True)}
    )
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
            out = _frame(cur, _TRAJ_MULTI_SQL.format(xf=xf), [max_points, buckets, buckets, max_points])
    out["step"] = out["step"].astype("int64")
    out["value"] = out["value"].astype("float64")
    return out[COLUMNS]
