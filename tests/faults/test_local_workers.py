"""Embedded mode's local workers under kill -9 and concurrent launches (issue #9 item 5).

Real `gamma-lab` processes and real `python -m tasks.local_worker` processes on a real data folder:
- the only worker killed mid-sweep while a second sweep waits: its unit is queued again as a new
  attempt, a new worker trains it and the waiting sweep; both sweeps end done with every point
  stored once (the sweep used to stay `queued` for ever, and `rerun` could not take queued runs);
- a unit whose worker dies twice is not retried a third time: its runs end `lost` with the reason,
  and the work queued behind it still trains;
- four concurrent launches with GAMMA_LAB_WORKERS=1 never run more than one worker (they left three).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
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

STEPS = 4000  # a unit trains for a few seconds on a loaded 2-core machine: long enough to be killed
EVAL = 3


def claims(data: Path) -> list[tuple[str, int]]:
    """(unit_id, worker pid) of the units being trained now."""
    folder = data / "queue" / "claimed"
    out = []
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        unit, pid, _ = f.name.split(".")
        out.append((unit, int(pid)))
    return out


def worker_processes(data: Path) -> list[int]:
    """Live (not zombie) `tasks.local_worker` processes of this data folder, from /proc: what runs,
    whether or not it registered."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
            if b"tasks.local_worker" not in cmd:
                continue
            env = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"GAMMA_LAB_DATA={data}".encode() in env and state != "Z":
            found.append(int(entry.name))
    return found


def started_runs(data: Path, run_ids: set[str]) -> bool:
    """Some of these runs are `running` in the registry (the worker is training, not starting up)."""
    try:
        return any(r["status"] == "running" for r in registry_runs(data) if r["run_id"] in run_ids)
    except Exception:  # noqa: BLE001 - the registry may be mid-write; poll again
        return False


def run_ids_of(spec_text: str) -> set[str]:
    from tasks.spec import SweepSpec

    return {c.run_id for c in SweepSpec.from_toml(spec_text).cells()}


def kill_when_training(data: Path, runs: set[str], not_pid: int | None = None) -> int:
    """Wait until a worker (other than `not_pid`) trains these runs, then SIGKILL it. Returns its pid."""

    def training() -> int | None:
        for _, pid in claims(data):
            if pid != not_pid and started_runs(data, runs):
                return pid
        return None

    pid = int(wait_for(training, 120, "a worker training the first sweep", every=0.1))  # type: ignore[arg-type]
    os.kill(pid, signal.SIGKILL)
    return pid


def sweep_wait(env: dict[str, str], folder: Path, *texts: str) -> tuple[subprocess.Popen[bytes], Path]:
    """`gamma-lab sweep a.toml b.toml ... --wait` in the background, logging to folder/sweep.log."""
    paths = []
    for i, text in enumerate(texts):
        paths.append(folder / f"{chr(ord('a') + i)}.toml")
        paths[-1].write_text(text)
    log = folder / "sweep.log"
    return spawn(env, ["sweep", *map(str, paths), "--wait"], log), log


def check_points(data: Path, runs: list[dict], steps: int) -> dict[str, int]:
    counts = store_counts(data / "metrics.duckdb")
    assert counts.duplicates == 0
    per_run = {r["run_id"]: counts.per_run.get((r["run_id"], r["attempt"]), 0) for r in runs}
    return per_run


def test_the_only_worker_killed_mid_sweep_with_a_second_sweep_waiting(lab: Path, tmp_path: Path) -> None:
    env = base_env(lab)
    a_text = small_spec("a", etas=(0.01, 0.1), steps=STEPS, eval_points=EVAL)
    b_text = small_spec("b", etas=(0.02, 0.2), steps=STEPS, eval_points=EVAL)
    proc, log = sweep_wait(env, tmp_path, a_text, b_text)
    try:
        killed = kill_when_training(lab, run_ids_of(a_text))
        code = wait_for(lambda: proc.poll() is not None and (proc.returncode,), 300, "sweep --wait to end")
    finally:
        stop(proc)
    out = log.read_text()
    assert code == (0,), out[-4000:]
    assert f"local worker pid {killed} died while training 2 run(s)" in out, out[-4000:]
    assert "queued again as a new attempt" in out
    runs = registry_runs(lab)
    assert len(runs) == 4
    assert sorted(r["status"] for r in runs) == ["done"] * 4, [(r["status"], r["error"]) for r in runs]
    a_runs, b_runs = run_ids_of(a_text), run_ids_of(b_text)
    assert {r["run_id"]: r["attempt"] for r in runs if r["run_id"] in a_runs} == dict.fromkeys(a_runs, 1)
    assert {r["run_id"]: r["attempt"] for r in runs if r["run_id"] in b_runs} == dict.fromkeys(b_runs, 0)
    per_run = check_points(lab, runs, STEPS)
    assert per_run == dict.fromkeys(per_run, expected_points(STEPS, EVAL)), per_run
    assert killed not in worker_processes(lab)
    print(f"killed worker {killed}; stored points per run {per_run}; expected {expected_points(STEPS, EVAL)}")


def test_a_unit_whose_worker_dies_twice_ends_lost_and_the_queue_goes_on(lab: Path, tmp_path: Path) -> None:
    env = base_env(lab)
    a_text = small_spec("a", etas=(0.01, 0.1), steps=STEPS, eval_points=EVAL)
    b_text = small_spec("b", etas=(0.02,), steps=200, eval_points=EVAL)
    proc, log = sweep_wait(env, tmp_path, a_text, b_text)
    a_runs = run_ids_of(a_text)
    try:
        first = kill_when_training(lab, a_runs)
        # the unit is queued again (attempt 1) and claimed by a new worker: kill that one too
        wait_for(
            lambda: all(r["attempt"] == 1 for r in registry_runs(lab) if r["run_id"] in a_runs),
            120,
            "the first sweep's runs to be queued again as attempt 1",
        )
        second = kill_when_training(lab, a_runs, not_pid=first)
        code = wait_for(lambda: proc.poll() is not None and (proc.returncode,), 300, "sweep --wait to end")
    finally:
        stop(proc)
    out = log.read_text()
    assert code == (1,), out[-4000:]
    assert f"local worker pid {first} died while training 2 run(s)" in out, out[-4000:]
    assert f"local worker pid {second} died again while training 2 run(s)" in out, out[-4000:]
    runs = {r["run_id"]: r for r in registry_runs(lab)}
    for rid in a_runs:
        assert runs[rid]["status"] == "lost" and runs[rid]["attempt"] == 1
        assert f"died 2 times while training it (pids {first}, {second}" in runs[rid]["error"], runs[rid]["error"]
        assert "gamma-lab rerun" in runs[rid]["error"]
    b_run = next(iter(run_ids_of(b_text)))
    assert runs[b_run]["status"] == "done"
    per_run = check_points(lab, list(runs.values()), STEPS)
    assert per_run[b_run] == expected_points(200, EVAL)
    assert all(per_run[rid] < expected_points(STEPS, EVAL) for rid in a_runs)  # partial: killed mid-way
    assert not claims(lab) and not list((lab / "queue" / "pending").glob("*.json"))
    lost_points = [per_run[r] for r in a_runs]
    # what the user does: rerun the lost runs (a new attempt, a fresh count of deaths); they train
    sweep_a = next(line.split()[1] for line in out.splitlines() if line.startswith("sweep ") and "(a)" in line)
    res = cli(env, "rerun", sweep_a)
    assert res.returncode == 0 and "2 run(s) queued again" in res.stderr, res.stderr
    wait_for(lambda: not claims(lab) and not worker_processes(lab), 300, "the rerun to be trained")
    status = cli(env, "status", sweep_a)  # records the rerun's events
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
    runs = {r["run_id"]: r for r in registry_runs(lab)}
    assert [(runs[r]["status"], runs[r]["attempt"]) for r in sorted(a_runs)] == [("done", 2), ("done", 2)]
    per_run = check_points(lab, list(runs.values()), STEPS)
    assert [per_run[r] for r in a_runs] == [expected_points(STEPS, EVAL)] * 2
    print(f"killed {first}, {second}; lost runs' stored points (attempt 1) {lost_points}; after rerun {per_run}")


def test_four_concurrent_launches_keep_one_worker(lab: Path, tmp_path: Path) -> None:
    env = base_env(lab)  # GAMMA_LAB_WORKERS=1
    texts = [small_spec(f"s{i}", etas=(0.01 * (i + 1),), steps=600, eval_points=EVAL) for i in range(4)]
    logs, procs = [], []
    for i, text in enumerate(texts):
        (tmp_path / f"s{i}.toml").write_text(text)
    for i in range(4):  # started together: they submit and count workers at the same moment
        logs.append(tmp_path / f"s{i}.log")
        procs.append(spawn(env, ["sweep", str(tmp_path / f"s{i}.toml")], logs[-1]))
    most, most_registered, samples = 0, 0, 0
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            most = max(most, len(worker_processes(lab)))
            reg = lab / "queue" / "workers"
            most_registered = max(most_registered, len([f for f in reg.iterdir()]) if reg.is_dir() else 0)
            samples += 1
            launched = all(p.poll() is not None for p in procs)
            pending = lab / "queue" / "pending"
            idle = not claims(lab) and not (pending.is_dir() and any(pending.glob("*.json")))
            if launched and idle and not worker_processes(lab):
                break
            time.sleep(0.02)
        else:
            raise AssertionError("timed out waiting for the four sweeps' work to be done")
    finally:
        for p in procs:
            stop(p)
    assert [p.returncode for p in procs] == [0] * 4, [log.read_text()[-2000:] for log in logs]
    assert most == 1, f"{most} worker processes at once (sampled {samples} times)"
    assert most_registered <= 1
    status = cli(env, "status")  # records the waiting events
    assert status.returncode == 0, status.stderr
    runs = registry_runs(lab)
    assert sorted(r["status"] for r in runs) == ["done"] * 4
    per_run = check_points(lab, runs, 600)
    assert per_run == dict.fromkeys(per_run, expected_points(600, EVAL)), per_run
    print(f"at most {most} worker process(es) in {samples} samples; points per run {per_run}")


def test_status_and_rerun_restart_queued_work_whose_worker_was_killed(lab: Path, tmp_path: Path) -> None:
    """No --wait, no dashboard: the worker is killed and nobody is around. `status` says so and
    supervises (the unit is queued again, a worker started); the sweep then ends done."""
    env = base_env(lab)
    text = small_spec("a", etas=(0.01, 0.1), steps=STEPS, eval_points=EVAL)
    (tmp_path / "a.toml").write_text(text)
    res = cli(env, "sweep", str(tmp_path / "a.toml"))
    assert res.returncode == 0, res.stderr
    sweep_id = res.stdout.strip().splitlines()[-1]

    def claimed_pid() -> int | None:
        return claims(lab)[0][1] if claims(lab) else None

    pid = int(wait_for(claimed_pid, 120, "the worker to claim the unit"))  # type: ignore[arg-type]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: pid not in worker_processes(lab), 30, "the killed worker to be gone")
    status = cli(env, "status", sweep_id)
    assert status.returncode == 0, status.stderr
    assert f"local worker pid {pid} died while training 2 run(s) of sweep {sweep_id}" in status.stderr, status.stderr
    assert "2 run(s) queued, no local worker alive: started 1" in status.stderr, status.stderr
    wait_for(lambda: not claims(lab) and not worker_processes(lab), 300, "the requeued unit to be trained")
    status = cli(env, "status", sweep_id)
    runs = registry_runs(lab)
    assert [r["status"] for r in runs] == ["done", "done"], status.stdout
    per_run = check_points(lab, runs, STEPS)
    assert per_run == dict.fromkeys(per_run, expected_points(STEPS, EVAL)), per_run
