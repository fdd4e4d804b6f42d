"""How far running runs have got: the last logged step of each, from the metric store's summaries.

The registry learns a run's `steps_done` only when the run finishes, so a table of running runs
showed nothing moving. The recorder keeps `summaries` (one row per run, attempt and metric, with the
last logged step) up to date as points arrive; `last_steps` reads it for many runs in one query
(never one query per run: the Runs page asks every few seconds).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from storage.queries import QuerySource, _frame, _open, _registered
from storage.registry import runs_columns
from storage.settings import Settings

if TYPE_CHECKING:  # imported where the frame is made: `sweep --wait` reads last_step_of without it (0.2 s)
    import pandas as pd

COLUMNS = ["run_id", "last_step"]

_LAST_STEPS_SQL = """
SELECT w.run_id, m.last_step
FROM want w JOIN run_keys k USING (run_id)
JOIN summaries m ON m.run_key = k.run_key AND m.attempt = w.attempt
WHERE m.metric = ?
ORDER BY w.run_id
"""


def _empty() -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame({"run_id": pd.Series(dtype=str), "last_step": pd.Series(dtype="int64")})


def _query(source: Settings | QuerySource, run_ids: Sequence[str], metric: str, fetch: Any) -> Any:
    """`fetch(cursor, sql, params)` of _LAST_STEPS_SQL over the runs' current attempts, or None when
    nothing can have been logged (no runs, no store, a store without tables yet)."""
    run_ids = list(dict.fromkeys(str(r) for r in run_ids))
    if not run_ids:
        return None
    with _open(source) as (cur, registry):
        cols = runs_columns(registry, run_ids=run_ids, fields=("run_id", "attempt"))
        if cur is None or not cols["run_id"]:
            return None
        want = pa.table(
            {"run_id": pa.array(cols["run_id"], pa.string()), "attempt": pa.array(cols["attempt"], pa.int32())}
        )
        try:
            with _registered(cur, "want", want):
                return fetch(cur, _LAST_STEPS_SQL, [str(metric)])
        except duckdb.CatalogException:  # a store file without tables yet: nothing logged
            return None


def last_steps(source: Settings | QuerySource, run_ids: Sequence[str], metric: str = "train_loss") -> pd.DataFrame:
    """Columns run_id, last_step: per run the last step (0-based) at which `metric` was logged in its
    current attempt. train_loss is logged every step, so last_step + 1 steps are done. Runs without
    points of their current attempt (queued, just started, unknown ids) are left out. One registry read
    (the current attempts) and one DuckDB query, whatever the number of runs."""
    out = _query(source, run_ids, metric, _frame)
    if out is None:
        return _empty()
    out["last_step"] = out["last_step"].astype("int64")
    return out[COLUMNS]


def last_step_of(source: Settings | QuerySource, run_ids: Sequence[str], metric: str = "train_loss") -> dict[str, int]:
    """last_steps as {run_id: last_step}, without pandas: the CLI's progress bar (app.cli_wait) reads
    it twice a second beside the training, and importing pandas for it cost 0.2 s of CPU there."""
    rows = _query(source, run_ids, metric, lambda cur, sql, params: cur.execute(sql, params).fetchall())
    return {str(run_id): int(step) for run_id, step in rows or ()}
