"""The "no Celery worker consumes the 'cpu' queue" warning (issue 9, item 9) with real processes: a private
redis-server, a real `gamma-lab worker`, `gamma-lab recorder`, the `gamma-lab` CLI.

submit used to ask the workers by broadcast and wait 1 s for replies; a solo-pool worker training a unit
answers nothing until the unit ends, so every submit while it trained (3 of 3 in the issue) warned
falsely. Workers now register in Redis (a key per worker, short TTL, refreshed by a thread), and submit
reads the keys.
"""

from __future__ import annotations

import subprocess
import sys
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

WARNING = "no Celery worker consumes the 'cpu' queue"
# minutes of training: the solo worker is busy (its main thread trains) while the others are submitted, then cancelled
LONG_STEPS, LONG_WIDTH = 200000, 512
STEPS = 200
EVAL_POINTS = 3


def _sweep(
    env: dict[str, str], folder: Path, name: str, etas: tuple[float, ...], steps: int, width: int = 16
) -> tuple[str, str]:
    spec = folder / f"{name}.toml"
    spec.write_text(small_spec(name, etas=etas, steps=steps, eval_points=EVAL_POINTS, width=width))
    res = cli(env, "sweep", str(spec))
    assert res.returncode == 0, res.stderr
    return res.stdout.split()[-1], res.stderr


def test_no_false_warning_while_a_worker_trains_under_load_and_a_warning_without_one(lab: Path, redis_factory) -> None:  # type: ignore[no-untyped-def]
    redis = redis_factory(appendonly=False)
    env = base_env(lab, GAMMA_LAB_BROKER_URL=redis.url)
    folder = lab.parent

    # no worker anywhere: the warning, naming the command that serves the queue
    first, err = _sweep(env, folder, "first", (0.01,), STEPS)
    assert WARNING in err and "gamma-lab worker" in err, err

    procs = [
        spawn(env, ["recorder"], folder / "recorder.log"),
        spawn(env, ["worker", "--queue", "cpu", "--device", "cpu", "--concurrency", "1"], folder / "worker.log"),
    ]
    burners: list[subprocess.Popen[bytes]] = []
    sweeps = {first: 1}
    try:
        wait_for(lambda: " ready." in (folder / "worker.log").read_text(errors="replace"), 120, "the worker")
        busy, err = _sweep(env, folder, "busy", (0.02, 0.05), LONG_STEPS, LONG_WIDTH)
        assert WARNING not in err, err
        sweeps[busy] = 2
        wait_for(
            lambda: (
                any(r["status"] == "running" and r["steps_done"] is None for r in registry_runs(lab))
                and {r["status"] for r in registry_runs(lab) if r["eta"] == 0.05} == {"running"}
            ),
            120,
            "the long unit to train",
        )
        # the machine is busy too: two processes spinning on the two cores
        burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
        for i, eta in enumerate((0.1, 0.2, 0.3)):
            sid, err = _sweep(env, folder, f"while-busy-{i}", (eta,), STEPS)
            assert WARNING not in err, f"submit {i + 1} of 3 while the worker trained: {err}"
            sweeps[sid] = 1
            assert any(r["status"] == "running" for r in registry_runs(lab) if r["eta"] == 0.05)  # still busy
        for b in burners:
            b.kill()
        res = cli(env, "cancel", busy)  # no need to wait for it: the point was that it kept the worker busy
        assert res.returncode == 0, res.stderr
        runs = wait_for(
            lambda: (rs := registry_runs(lab)) and all(r["status"] in ("done", "cancelled") for r in rs) and rs,
            240,
            "every sweep to end",
        )
    finally:
        for b in burners:
            b.kill()
            b.wait()
        for p in procs:
            stop(p)
    counts = store_counts(lab / "metrics.duckdb")
    states = {r["run_id"]: r["status"] for r in runs}
    stored = {r["run_id"]: counts.per_run.get((r["run_id"], 0), 0) for r in runs}
    print(f"runs {len(runs)}: {states}; stored points per run: {stored}; duplicates {counts.duplicates}")
    assert len(runs) == sum(sweeps.values())
    for r in runs:
        if r["eta"] in (0.02, 0.05):  # the long unit, cancelled: its points up to where it stopped
            assert r["status"] == "cancelled" and 0 < stored[r["run_id"]] < expected_points(LONG_STEPS, EVAL_POINTS)
        else:
            assert r["status"] == "done" and stored[r["run_id"]] == expected_points(STEPS, EVAL_POINTS), r
    assert counts.duplicates == 0

    # the worker stopped: its registration is gone, and the warning is back
    _sid, err = _sweep(env, folder, "after", (0.4,), STEPS)
    assert WARNING in err, err
