"""Overdue runs: `running` in the registry, but no heartbeat recorded for a while.

A worker heartbeats every `heartbeat_s`; the recorder marks a run `lost` after `lost_after_s` without one.
In between, `gamma-lab status` and the Runs page say that runs are overdue, so a stopped worker, a
broker restart or a recorder that is not running shows before the runs turn lost.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from storage.settings import Settings

OVERDUE_PERIODS = 2.5  # heartbeat periods of silence before a running run is called overdue


def overdue_runs(runs: Iterable[Mapping[str, Any]], heartbeat_s: float, now: float | None = None) -> dict[str, float]:
    """run_id -> seconds since its last sign of life (heartbeat, else start, else creation), for the
    running runs silent for more than OVERDUE_PERIODS heartbeat periods."""
    now = time.time() if now is None else now
    out = {}
    for r in runs:
        if r.get("status") != "running":
            continue
        last = r.get("heartbeat") or r.get("started") or r.get("created")
        if last is not None and now - float(last) > OVERDUE_PERIODS * heartbeat_s:
            out[str(r["run_id"])] = now - float(last)
    return out


def overdue_line(runs: Iterable[Mapping[str, Any]], settings: Settings, now: float | None = None) -> str | None:
    """The line "N run(s) overdue: no heartbeat for X s; marked lost after Y s ...", or None when none is."""
    over = overdue_runs(runs, settings.heartbeat_s, now)
    if not over:
        return None
    return (
        f"{len(over)} run(s) overdue: no heartbeat for {max(over.values()):.0f} s; marked lost after "
        f"{settings.lost_after_s:g} s without one (a stopped worker, a broker restart, or no recorder running)"
    )
