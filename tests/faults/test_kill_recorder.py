"""kill -9 of the recording process in the middle of a sweep, then a new one: every point stored once.

The recorder ingests a batch in one DuckDB transaction that also records (run, attempt, seq), updates
the registry, and only then acknowledges the events on the bus (spool file unlinked, or XACK). A kill
anywhere in between replays at most the unacknowledged events, which the stored (run, attempt, seq)
absorb. Real `gamma-lab recorder` processes, real workers (local, or a Celery worker over Redis)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.faults.conftest import (
    base_env,
    cli,
    expected_points,
    registry_runs,
    small_spec,
    spawn,
    stop,
    store_counts,
    wait_for,
)

pytestmark = pytest.mark.slow

STEPS = 6000
EVAL_POINTS = 3


@pytest.mark.parametrize("bus", ["spool", "redis"])
def test_recorder_killed_mid_sweep_then_restarted_stores_every_point_once(
    tmp_path: Path, lab: Path, redis_factory, bus: str
) -> None:
    extra: dict[str, str] = {}
    procs = []
    if bus == "redis":
        extra["GAMMA_LAB_BROKER_URL"] = redis_factory(appendonly=False).url
    env = base_env(lab, **extra)
    log = tmp_path / "recorder.log"
    first = spawn(env, ["recorder"], log)
    procs.append(first)
    try:
        wait_for(lambda: "recording" in log.read_text(errors="replace"), 60, "the first recorder")
        if bus == "redis":
            wlog = tmp_path / "worker.log"
            procs.append(spawn(env, ["worker", "--queue", "cpu", "--device", "cpu"], wlog))
            wait_for(lambda: " ready." in wlog.read_text(errors="replace"), 120, "the Celery worker")
        spec = lab / "spec.toml"
        spec.write_text(small_spec("kill-recorder", etas=(0.01, 0.03, 0.1), steps=STEPS, eval_points=EVAL_POINTS))
        res = cli(env, "sweep", str(spec))
        assert res.returncode == 0, res.stderr[-2000:]
        sweep_id = res.stdout.split()[-1]

        def some_recorded() -> bool:
            runs = registry_runs(lab)
            return any(r["status"] == "running" for r in runs)

        wait_for(some_recorded, 120, "runs recorded as running")
        os.kill(first.pid, signal.SIGKILL)  # mid-sweep: points are being ingested
        first.wait(10)
        assert any(r["status"] in ("queued", "running") for r in registry_runs(lab)), "the sweep ended too soon"
        second = spawn(env, ["recorder"], tmp_path / "recorder2.log")
        procs.append(second)
        wait_for(
            lambda: all(r["status"] not in ("queued", "running") for r in registry_runs(lab)),
            240,
            "every run to end after the restart",
        )
        stop(second)
    finally:
        for p in procs:
            stop(p)
    runs = registry_runs(lab)
    assert sorted(r["status"] for r in runs) == ["done"] * 3, [(r["status"], r["error"]) for r in runs]
    counts = store_counts(lab / "metrics.duckdb")
    per_run = expected_points(STEPS, EVAL_POINTS)
    assert {rid: n for (rid, _att), n in counts.per_run.items()} == {r["run_id"]: per_run for r in runs}
    assert counts.duplicates == 0
    assert cli(env, "status", sweep_id).returncode == 0
