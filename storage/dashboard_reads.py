"""Small registry reads for the dashboard at 10,000 runs: a cheap change fingerprint of a sweep and
its runs table without the config JSON.

`Registry.list_runs` parses every run's config JSON (≈ 0.5 s for a 10,000-run sweep); the pages need
none of it. `sweep_fingerprint` is one grouped query that changes whenever any run of the sweep
changes in a way the runs table shows (status, attempt, start, end, cancel flag, a run added), so
the dashboard re-reads the table only when something changed.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import sqlalchemy as sa

from storage.registry import (
    SUMMARY_KEYS,
    SWEEP_STATUS,
    VIEW_COLUMNS,
    Registry,
    newer_note,
    raw_rows,
    runs,
    sweep_runs,
)

RUN_TABLE_COLUMNS = ("run_id", "gamma", "eta", "seed", "status", "newer", "attempt", "shown_attempt", "worker",
                     "started", "ended", "duration_s", "steps_done", "diverged_step", *SUMMARY_KEYS, "width", "depth",
                     "error")


def sweep_fingerprint(registry: Registry, sweep_id: str) -> tuple[tuple[Any, ...], ...]:
    """A value that changes whenever a run of the sweep changes status, attempt, start or end time or
    cancel flag, or a run is added: per status (count, sum of attempts, latest start, latest end,
    cancel flags), sorted by status. One grouped query over the sweep's runs. An unknown sweep gives ()."""
    q = (sa.select(runs.c.status, sa.func.count(), sa.func.sum(runs.c.attempt), sa.func.max(runs.c.started),
                   sa.func.max(runs.c.ended),
                   sa.func.sum(sa.case((runs.c.cancel_requested, 1), else_=0)))
         .join(sweep_runs, sweep_runs.c.run_id == runs.c.run_id)
         .where(sweep_runs.c.sweep_id == sweep_id)
         .group_by(runs.c.status).order_by(runs.c.status))
    return tuple((str(s), int(n), int(a or 0), st, en, int(c or 0)) for s, n, a, st, en, c in raw_rows(registry, q))


def runs_table(registry: Registry, sweep_id: str) -> pd.DataFrame:
    """The runs of a sweep ordered by (γ, η, seed), columns RUN_TABLE_COLUMNS (summary flattened to its
    four numbers; no config JSON parsed). Each run as the views show it (storage.registry.VIEW_COLUMNS):
    `status` is its status as the sweep reads it (SWEEP_STATUS); steps_done, diverged_step and the
    summary numbers are those of its shown attempt (`shown_attempt`; `attempt` is the current one);
    `newer` says when a newer attempt is queued, running, or was cancelled, failed or lost while an
    earlier finished one is shown ("attempt 1 cancelled; showing attempt 0 (done)"; "" otherwise)."""
    v = VIEW_COLUMNS
    cols = [runs.c.run_id, runs.c.gamma, runs.c.eta, runs.c.seed, SWEEP_STATUS, runs.c.attempt,
            runs.c.worker, v["shown_steps_done"], v["shown_diverged_step"], v["shown_summary"], runs.c.width,
            runs.c.depth, runs.c.error, v["shown_attempt"], v["shown_status"], v["newer_status"], runs.c.started,
            sa.case((v["shown_attempt"] == runs.c.attempt, runs.c.ended), else_=runs.c.result_ended)]
    q = (sa.select(*cols).join(sweep_runs, sweep_runs.c.run_id == runs.c.run_id)
         .where(sweep_runs.c.sweep_id == sweep_id).order_by(runs.c.gamma, runs.c.eta, runs.c.seed))
    rows = raw_rows(registry, q)
    names = ["run_id", "gamma", "eta", "seed", "status", "attempt", "worker", "steps_done", "diverged_step",
             "summary", "width", "depth", "error", "shown_attempt", "shown_status", "newer_status", "started", "ended"]
    frame = pd.DataFrame.from_records(rows, columns=names)
    frame["newer"] = [newer_note({"newer_status": n, "shown_attempt": a, "shown_status": s}, att)
                      for n, a, s, att in zip(frame["newer_status"], frame["shown_attempt"], frame["shown_status"],
                                              frame["attempt"], strict=True)]
    summaries = [json.loads(s) if isinstance(s, str) and s else {} for s in frame["summary"]]  # (R,) dicts
    for key in SUMMARY_KEYS:
        frame[key] = pd.to_numeric(pd.Series([d.get(key) for d in summaries], index=frame.index, dtype=object),
                                   errors="coerce")
    frame["gamma"] = frame["gamma"].astype("float64")
    frame["eta"] = frame["eta"].astype("float64")
    frame["seed"] = frame["seed"].astype("int64")
    # start, end and duration of the attempt shown (a shown earlier attempt's start is not kept: no duration)
    started, ended = (pd.to_numeric(frame[c], errors="coerce").astype("float64") for c in ("started", "ended"))
    current = (frame["shown_attempt"] == frame["attempt"]).to_numpy()
    frame["duration_s"] = (ended - started).where(current)
    frame["started"] = pd.to_datetime(started.where(current), unit="s", utc=True)
    frame["ended"] = pd.to_datetime(ended, unit="s", utc=True)
    return frame[list(RUN_TABLE_COLUMNS)]
