"""Redis restarted during a Celery sweep (issue 9, item 1), with real processes: a private redis-server,
`gamma-lab recorder`, `gamma-lab worker --queue cpu --device cpu --concurrency 1`, the `gamma-lab` CLI.

The sweep has two units (two runs each): one trains while the other waits in the Celery queue. A few
seconds in, the recorder is paused (SIGSTOP, so events wait unrecorded in the stream as they do behind
a busy recorder), Redis is shut down with `shutdown nosave` and started again on the same port, and the
recorder resumes.

- Without persistence the broker loses the unrecorded events and both units' messages. The recorder
  creates its stream again (one line, no NOGROUP loop), the trained unit's runs end `failed` naming the
  gap (never `done` with missing points), the queued unit's runs end `lost` naming the lost unit (never
  `queued` for ever); `gamma-lab rerun SWEEP` then trains them with stored points == expected.
- With append-only persistence (as docker/compose.yml runs Redis) nothing is lost: every run ends
  `done` with stored points == expected, no rerun.
Both: duplicates 0, no traceback in the recorder's or the worker's log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from storage.registry import Registry
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

STEPS = 15000  # a unit of two runs trains for ~9 s on one thread: the restart lands mid-unit
EVAL_POINTS = 3
FINAL = ("done", "diverged", "failed", "cancelled", "lost")


def _launch(lab: Path, redis_url: str) -> tuple[dict[str, str], list, list[str]]:  # type: ignore[type-arg]
    """A recorder, a worker and two 2-run Celery sweeps (one unit each: the second waits in the queue
    while the first trains); returns (env, [recorder, worker], [sweep A, sweep B])."""
    env = base_env(lab, GAMMA_LAB_BROKER_URL=redis_url)
    procs = [
        spawn(env, ["recorder"], lab.parent / "recorder.log"),
        spawn(env, ["worker", "--queue", "cpu", "--device", "cpu", "--concurrency", "1"], lab.parent / "worker.log"),
    ]
    worker_log = lab.parent / "worker.log"
    wait_for(lambda: " ready." in worker_log.read_text(errors="replace"), 120, "the worker to be ready")
    sweeps = []
    for name, etas in (("restart-a", (0.01, 0.1)), ("restart-b", (0.02, 0.05))):
        spec = lab.parent / f"{name}.toml"
        spec.write_text(small_spec(name, etas=etas, steps=STEPS, eval_points=EVAL_POINTS))
        res = cli(env, "sweep", str(spec))
        assert res.returncode == 0, res.stderr
        sweeps.append(res.stdout.split()[-1])
    return env, procs, sweeps


def _restart_mid_unit(lab: Path, redis, recorder) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Once the first unit trains: pause the recorder, `redis-cli shutdown nosave`, start Redis again
    on the same port, resume the recorder. Returns the runs' statuses when the recorder was paused."""

    def training() -> bool:
        return any(r["status"] == "running" for r in registry_runs(lab))

    wait_for(training, 120, "the first unit to start training")
    time.sleep(1.5)  # points flowing
    os.kill(recorder.pid, signal.SIGSTOP)
    before = {r["run_id"]: r["status"] for r in registry_runs(lab)}
    try:
        time.sleep(1.0)  # events wait unrecorded in the stream
        subprocess.run(["redis-cli", "-p", str(redis.port), "shutdown", "nosave"], capture_output=True, timeout=30)
        redis.proc.wait(30)
        time.sleep(0.5)
        redis.start()
    finally:
        os.kill(recorder.pid, signal.SIGCONT)
    return before


def _settled(lab: Path) -> list[dict] | None:
    """Every run in a final state, twice 3 s apart with the same statuses (a run marked lost whose
    worker was only cut off for a moment turns running again at its next heartbeat)."""
    runs = registry_runs(lab)
    if not runs or any(r["status"] not in FINAL for r in runs):
        return None
    time.sleep(3)
    again = registry_runs(lab)
    same = {r["run_id"]: (r["status"], r["attempt"]) for r in runs} == {
        r["run_id"]: (r["status"], r["attempt"]) for r in again
    }
    return again if same else None


def _logs(lab: Path) -> tuple[str, str]:
    recorder, worker = lab.parent / "recorder.log", lab.parent / "worker.log"
    return recorder.read_text(errors="replace"), worker.read_text(errors="replace")


def _counts_after_stop(lab: Path, procs: list) -> tuple[int, dict]:  # type: ignore[type-arg]
    """Stop the recorder and the worker, then count what the DuckDB file holds."""
    for p in procs:
        stop(p)
    counts = store_counts(lab / "metrics.duckdb")
    return counts.duplicates, counts.per_run


def test_redis_restart_without_persistence_recovers_and_rerun_completes(lab: Path, redis_factory) -> None:  # type: ignore[no-untyped-def]
    redis = redis_factory(appendonly=False)
    env, procs, (sweep_a, sweep_b) = _launch(lab, redis.url)
    expected = expected_points(STEPS, EVAL_POINTS)
    try:
        before = _restart_mid_unit(lab, redis, procs[0])
        assert "queued" in before.values() and "running" in before.values(), before
        runs = wait_for(lambda: _settled(lab), 120, "every run to end (none stuck queued/running)")
        print("at the restart:", before)
        print("after the restart:", {r["run_id"]: (r["status"], (r["error"] or "")[:90]) for r in runs})
        recorder_log, worker_log = _logs(lab)
        assert recorder_log.count("lost the event stream") == 1, recorder_log
        assert "NOGROUP" not in recorder_log and "Traceback" not in recorder_log, recorder_log
        assert "Traceback" not in worker_log, worker_log
        assert "broker unreachable" in worker_log and "broker reachable again" in worker_log, worker_log
        with Registry(f"sqlite:///{lab / 'registry.sqlite'}") as reg:
            in_a, in_b = set(reg.run_ids_for(sweep_a)), set(reg.run_ids_for(sweep_b))
        done_before = set()
        for r in runs:
            sweep_id = sweep_a if r["run_id"] in in_a else sweep_b
            if before[r["run_id"]] == "queued":  # Redis lost its message: lost with the reason, not queued
                assert r["status"] == "lost" and "lost this run's queued unit" in r["error"], r
                assert f"gamma-lab rerun {sweep_id}" in r["error"], r["error"]
            elif before[r["run_id"]] == "running":  # trained across the restart: its unrecorded batches are gone
                assert r["status"] in ("failed", "lost"), r  # lost: its `finished` event was lost too
                if r["status"] == "failed":
                    assert "points batches of attempt 0 never reached" in r["error"], r["error"]
                    assert f"gamma-lab rerun {sweep_id}" in r["error"], r["error"]
            else:
                assert r["status"] == "done", r
                done_before.add(r["run_id"])

        for sweep_id, ids in ((sweep_a, in_a), (sweep_b, in_b)):
            res = cli(env, "rerun", sweep_id)
            assert res.returncode == 0, res.stderr
            assert f"{len(ids - done_before)} run(s) queued again" in res.stderr, res.stderr
        runs = wait_for(
            lambda: (rs := _settled(lab)) and all(r["status"] == "done" for r in rs) and rs, 180, "the reruns to finish"
        )
    finally:
        dups, per_run = _counts_after_stop(lab, procs)
    stored = {r["run_id"]: per_run.get((r["run_id"], r["attempt"]), 0) for r in runs}
    print(f"expected {expected} points per run; stored per run (new attempt): {stored}; duplicates {dups}")
    assert all(r["attempt"] == (0 if r["run_id"] in done_before else 1) for r in runs), runs
    assert all(n == expected for n in stored.values()), stored
    assert dups == 0


def test_redis_restart_with_append_only_persistence_loses_nothing(lab: Path, redis_factory) -> None:  # type: ignore[no-untyped-def]
    redis = redis_factory(appendonly=True)
    _env, procs, _sweeps = _launch(lab, redis.url)
    try:
        _restart_mid_unit(lab, redis, procs[0])
        runs = wait_for(lambda: _settled(lab), 180, "every run to end")
        recorder_log, worker_log = _logs(lab)
        assert "Traceback" not in recorder_log and "NOGROUP" not in recorder_log, recorder_log
        assert "lost the event stream" not in recorder_log, recorder_log
        assert "Traceback" not in worker_log, worker_log
    finally:
        dups, per_run = _counts_after_stop(lab, procs)
    expected = expected_points(STEPS, EVAL_POINTS)
    print("final:", {r["run_id"]: (r["status"], r["attempt"]) for r in runs})
    assert all(r["status"] == "done" and r["attempt"] == 0 for r in runs), runs
    stored = {r["run_id"]: per_run.get((r["run_id"], 0), 0) for r in runs}
    print(f"expected {expected} points per run; stored {stored}; duplicates {dups}")
    assert all(n == expected for n in stored.values()), stored
    assert dups == 0


def test_status_names_overdue_runs_before_they_turn_lost(lab: Path, redis_factory) -> None:  # type: ignore[no-untyped-def]
    # A worker that stops answering (frozen here with SIGSTOP; a broker restart looks the same to the
    # recorder): its runs stayed `running` and status said nothing until they turned lost.
    redis = redis_factory(appendonly=False)
    env = base_env(lab, GAMMA_LAB_BROKER_URL=redis.url, GAMMA_LAB_LOST_AFTER_S="60")
    procs = [
        spawn(env, ["recorder"], lab.parent / "recorder.log"),
        spawn(env, ["worker", "--queue", "cpu", "--device", "cpu", "--concurrency", "1"], lab.parent / "worker.log"),
    ]
    worker = procs[1]
    try:
        spec = lab.parent / "overdue.toml"
        spec.write_text(small_spec("overdue", etas=(0.01, 0.1), steps=STEPS, eval_points=EVAL_POINTS))
        res = cli(env, "sweep", str(spec))
        assert res.returncode == 0, res.stderr
        sweep_id = res.stdout.split()[-1]
        wait_for(lambda: any(r["status"] == "running" for r in registry_runs(lab)), 120, "the unit to train")
        os.kill(worker.pid, signal.SIGSTOP)
        try:
            one = wait_for(
                lambda: "2 run(s) overdue: no heartbeat for" in (out := cli(env, "status", sweep_id).stdout) and out,
                60,
                "status SWEEP to name the overdue runs",
            )
            print(one)
            assert "marked lost after 60 s" in str(one), one
            listing = cli(env, "status").stdout
            print(listing)
            assert f"sweep {sweep_id}: 2 run(s) overdue: no heartbeat for" in listing, listing
            assert all(r["status"] == "running" for r in registry_runs(lab))  # overdue, not lost yet
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        runs = wait_for(
            lambda: (rs := _settled(lab)) and all(r["status"] == "done" for r in rs) and rs, 120, "the unit to end"
        )
        assert "run(s) overdue" not in cli(env, "status", sweep_id).stdout
    finally:
        dups, per_run = _counts_after_stop(lab, procs)
    stored = {r["run_id"]: per_run.get((r["run_id"], 0), 0) for r in runs}
    print(f"expected {expected_points(STEPS, EVAL_POINTS)} per run; stored {stored}; duplicates {dups}")
    assert all(n == expected_points(STEPS, EVAL_POINTS) for n in stored.values()), stored
    assert dups == 0


def test_runs_page_names_overdue_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The Runs page (AppTest: the real page and its resources) for a run whose worker went silent 60 s
    # ago (heartbeats every 10 s): a warning with the count and the seconds before it turns lost; a run
    # with a fresh heartbeat is not counted.
    from streamlit.testing.v1 import AppTest

    from engine.config import ModelConfig, RunConfig
    from storage.settings import load_settings

    for k in [k for k in os.environ if k.startswith("GAMMA_LAB_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("GAMMA_LAB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("GAMMA_LAB_HEARTBEAT_S", "10")
    monkeypatch.setenv("GAMMA_LAB_LOST_AFTER_S", "600")
    settings = load_settings()
    settings.ensure_dirs()
    configs = [RunConfig(model=ModelConfig(width=8, depth=3), gamma=1.0, eta=e, seed=0) for e in (0.01, 0.1)]
    with Registry(settings.registry_url) as reg:
        sweep_id = reg.create_sweep("page", "t", {"train": {"steps": 100}})
        reg.add_runs(sweep_id, configs)
        silent, fresh = (c.run_id for c in configs)
        reg.mark_running(silent, 0, "w", now=time.time() - 60)
        reg.mark_running(fresh, 0, "w")
    main = str(Path(__file__).resolve().parents[2] / "app" / "main.py")
    at = AppTest.from_file(main, default_timeout=60)
    at.switch_page("views/runs.py").run()
    assert not at.exception, at.exception
    warnings = [w.value for w in at.warning if "overdue" in w.value]
    print(warnings)
    assert len(warnings) == 1 and warnings[0].startswith("1 run(s) overdue: no heartbeat for "), warnings
    assert "marked lost after 600 s" in warnings[0]


def test_broker_down_longer_than_lost_after_ends_the_runs_then_rerun_completes(lab: Path, redis_factory) -> None:  # type: ignore[no-untyped-def]
    # Redis stays down past lost_after_s (5 s): the worker stops the unit in one line, the recorder --
    # itself unable to read the bus -- still marks the silent runs lost within the documented time, and
    # once Redis is back `gamma-lab rerun` trains them with no gap and no duplicate.
    redis = redis_factory(appendonly=False)
    env = base_env(lab, GAMMA_LAB_BROKER_URL=redis.url)
    procs = [
        spawn(env, ["recorder"], lab.parent / "recorder.log"),
        spawn(env, ["worker", "--queue", "cpu", "--device", "cpu", "--concurrency", "1"], lab.parent / "worker.log"),
    ]
    try:
        spec = lab.parent / "outage.toml"
        spec.write_text(small_spec("outage", etas=(0.01, 0.1), steps=STEPS, eval_points=EVAL_POINTS))
        res = cli(env, "sweep", str(spec))
        assert res.returncode == 0, res.stderr
        sweep_id = res.stdout.split()[-1]
        wait_for(lambda: any(r["status"] == "running" for r in registry_runs(lab)), 120, "the unit to train")
        time.sleep(1.0)
        subprocess.run(["redis-cli", "-p", str(redis.port), "shutdown", "nosave"], capture_output=True, timeout=30)
        redis.proc.wait(30)
        # while the bus is down: lost within lost_after_s (+ a heartbeat period and the recorder's step)
        lost = wait_for(
            lambda: (rs := registry_runs(lab)) and all(r["status"] == "lost" for r in rs) and rs, 30, "runs lost"
        )
        assert all("no heartbeat for more than 5 s" in r["error"] for r in lost), lost
        wait_for(lambda: "stopped" in (lab.parent / "worker.log").read_text(errors="replace"), 60, "the unit to stop")
        redis.start()
        runs = wait_for(lambda: _settled(lab), 120, "every run to end")
        print("after the outage:", {r["run_id"]: (r["status"], r["attempt"]) for r in runs})
        recorder_log, worker_log = _logs(lab)
        assert "Traceback" not in recorder_log and "NOGROUP" not in recorder_log, recorder_log
        assert recorder_log.count("recorder step failed") <= 3, recorder_log  # one line per distinct error
        assert "recording again" in recorder_log, recorder_log
        assert "Traceback" not in worker_log, worker_log
        assert "broker unreachable for more than 5 s" in worker_log, worker_log
        if not all(r["status"] == "done" for r in runs):  # (a redelivered unit retrains them by itself)
            res = cli(env, "rerun", sweep_id)
            assert res.returncode == 0, res.stderr
            runs = wait_for(
                lambda: (rs := _settled(lab)) and all(r["status"] == "done" for r in rs) and rs, 120, "the rerun"
            )
    finally:
        dups, per_run = _counts_after_stop(lab, procs)
    stored = {r["run_id"]: per_run.get((r["run_id"], r["attempt"]), 0) for r in runs}
    print(f"expected {expected_points(STEPS, EVAL_POINTS)} per run; stored (new attempt) {stored}; duplicates {dups}")
    assert all(r["attempt"] >= 1 for r in runs), runs
    assert all(n == expected_points(STEPS, EVAL_POINTS) for n in stored.values()), stored
    assert dups == 0


def test_queued_units_lost_while_no_recorder_ran_end_lost_then_rerun(lab: Path, redis_factory) -> None:  # type: ignore[no-untyped-def]
    # Nothing records while Redis restarts without persistence (no recorder, no worker yet): the
    # queued unit's message is gone, and the runs sat `queued` for ever. The next recorder -- here the
    # one `gamma-lab status` opens to catch up -- finds no stream, notes the queued Celery runs and,
    # their messages absent, marks them lost with the reason; rerun then trains them.
    redis = redis_factory(appendonly=False)
    env = base_env(lab, GAMMA_LAB_BROKER_URL=redis.url)
    spec = lab.parent / "queued.toml"
    spec.write_text(small_spec("queued", etas=(0.01, 0.1), steps=200, eval_points=EVAL_POINTS))
    res = cli(env, "sweep", str(spec))
    assert res.returncode == 0, res.stderr
    sweep_id = res.stdout.split()[-1]
    subprocess.run(["redis-cli", "-p", str(redis.port), "shutdown", "nosave"], capture_output=True, timeout=30)
    redis.proc.wait(30)
    redis.start()
    out = cli(env, "status", sweep_id)
    print(out.stdout, out.stderr)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    runs = registry_runs(lab)
    assert all(r["status"] == "lost" and "lost this run's queued unit" in r["error"] for r in runs), runs
    assert all(f"gamma-lab rerun {sweep_id}" in r["error"] for r in runs), runs

    procs = [
        spawn(env, ["recorder"], lab.parent / "recorder.log"),
        spawn(env, ["worker", "--queue", "cpu", "--device", "cpu", "--concurrency", "1"], lab.parent / "worker.log"),
    ]
    try:
        res = cli(env, "rerun", sweep_id)
        assert res.returncode == 0 and "2 run(s) queued again" in res.stderr, res.stderr
        try:
            runs = wait_for(
                lambda: (rs := _settled(lab)) and all(r["status"] == "done" for r in rs) and rs, 120, "the rerun"
            )
        except AssertionError:
            recorder_log, worker_log = _logs(lab)
            print("runs:", registry_runs(lab), "\nrecorder log:\n", recorder_log, "\nworker log:\n", worker_log)
            raise
    finally:
        dups, per_run = _counts_after_stop(lab, procs)
    stored = {r["run_id"]: per_run.get((r["run_id"], 1), 0) for r in runs}
    print(f"expected {expected_points(200, EVAL_POINTS)} per run; stored (attempt 1) {stored}; duplicates {dups}")
    assert all(n == expected_points(200, EVAL_POINTS) for n in stored.values()), stored
    assert dups == 0
