"""Warm local workers (#10 item 8): the dashboard's workers start with it, wait for launches with torch
imported, train them in the same process, and leave when it does (or after their idle time); and the
Launch estimate uses the throughput this machine's workers measured."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from storage.registry import Registry
from storage.settings import load_settings
from tasks import api, local_queue, planner
from tasks.spec import SweepSpec

SPEC = {
    "name": "warm",
    "model": {"width": 8, "depth": 2},
    "data": {"dataset": "teacher", "input_dim": 4, "n_classes": 2},
    "train": {"steps": 30, "batch_size": 8, "eval_points": 2, "metrics": ["test"]},
    "grid": {"gamma": [1.0], "eta": [0.1]},
}


def _wait(pred, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := pred():
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.mark.slow
def test_warm_workers_wait_train_in_place_and_leave_with_their_dashboard(tmp_path: Path, monkeypatch, parent) -> None:  # type: ignore[no-untyped-def]
    for name in (local_queue.WARM_ENV, local_queue.PARENT_ENV):  # warm_up sets them; restored afterwards
        monkeypatch.setenv(name, "")
    settings = load_settings(data_dir=tmp_path / "data", workers=1, heartbeat_s=1, lost_after_s=5)
    settings.ensure_dirs()
    started = local_queue.warm_up(settings, idle_s=120, parent=parent.pid)
    assert len(started) == 1
    pid = started[0]
    time.sleep(2)  # no work: a cold worker would have left by now
    assert local_queue.live_workers(settings) == [pid]
    assert local_queue.warm_workers(settings) == 1
    # it measured this machine meanwhile (a cold start, a small calibration unit): the first estimate is ours
    m = _wait(lambda: (m := planner.measured_throughput(settings.data_dir, "cpu")).rate and m, 60, "a calibration")
    assert m.cold_start_s is not None and m.setup_s is not None

    sweep_id = api.submit(SweepSpec.from_dict(SPEC), settings, executor="local")
    from storage.recorder import Recorder

    with Recorder(settings) as rec:
        def settled() -> bool:
            rec.drain(timeout_s=2)
            return api.is_settled(settings, sweep_id)

        _wait(settled, 120, "the sweep to end")
    with Registry(settings.registry_url) as reg:
        runs = reg.list_runs(sweep_id)
    assert [r["status"] for r in runs] == ["done"]
    assert runs[0]["worker"].endswith(f":{pid}"), runs[0]["worker"]  # the warm one trained it, no new process
    assert local_queue.live_workers(settings) == [pid]  # and waits again

    parent.kill()
    parent.wait()
    _wait(lambda: not local_queue.live_workers(settings), 30, "the warm worker to leave with its dashboard")


@pytest.mark.slow
def test_a_warm_worker_leaves_after_its_idle_time(tmp_path: Path, monkeypatch, parent) -> None:  # type: ignore[no-untyped-def]
    for name in (local_queue.WARM_ENV, local_queue.PARENT_ENV):
        monkeypatch.setenv(name, "")
    settings = load_settings(data_dir=tmp_path / "data", workers=1)
    settings.ensure_dirs()
    started = local_queue.warm_up(settings, idle_s=2, parent=parent.pid)
    assert len(started) == 1
    _wait(lambda: not local_queue.live_workers(settings), 60, "the idle worker to leave")
    assert parent.poll() is None  # it left on its own, its dashboard still runs


def test_cold_workers_stay_cold(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv(local_queue.WARM_ENV, raising=False)
    monkeypatch.delenv(local_queue.PARENT_ENV, raising=False)
    assert local_queue.warm_settings() == (0.0, None)
    monkeypatch.setenv(local_queue.WARM_ENV, "not a number")
    assert local_queue.warm_settings() == (0.0, None)


def test_the_estimate_uses_the_measured_throughput(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, workers=1)
    spec = SweepSpec.from_dict(SPEC)
    constant = planner.plan(spec, settings).wall_seconds
    flops = planner.unit_flops(spec.cells())
    # a machine 100x slower than the constant assumes: the estimate follows the measurement
    slow_rate = planner.THROUGHPUT_FLOPS["cpu"] / 100
    planner.record_throughput(tmp_path, "cpu", 50 * slow_rate, 50.0)
    measured = planner.measured_throughput(tmp_path, "cpu")
    assert measured.rate is not None and measured.rate <= slow_rate * 1.0001  # (less when loaded now)
    slow = planner.plan(spec, settings).wall_seconds
    assert slow - planner.UNIT_OVERHEAD_S["cpu"] >= 0.999 * flops / slow_rate
    assert slow > constant
    # measured start-up and setup replace the constant overhead; warm workers pay no start-up
    planner.record_throughput(tmp_path, "cpu", 0, 0, setup_s=2.0, cold_start_s=20.0)
    m = planner.measured_throughput(tmp_path, "cpu")
    assert m.cold_start_s is not None and m.cold_start_s >= 20.0 and m.setup_s is not None and m.setup_s >= 2.0
    cold = planner.plan(spec, settings).wall_seconds
    warm = planner.plan(spec, settings, warm=True).wall_seconds
    assert cold - warm == pytest.approx(m.cold_start_s - planner.WARM_OVERHEAD_S, rel=0.05)
    assert warm >= m.setup_s


def test_a_damaged_or_stale_measurement_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / planner.THROUGHPUT_FILE
    path.write_text("{not json")
    assert planner.measured_throughput(tmp_path, "cpu") == planner.Measured(None, None, None)
    path.write_text(json.dumps({"cpu": {"flops_per_s": 1e9, "at": time.time() - 30 * 86400}}))
    assert planner.measured_throughput(tmp_path, "cpu").rate is None
    path.write_text(json.dumps({"cpu": {"flops_per_s": -1, "setup_s": "x", "at": time.time()}}))
    assert planner.measured_throughput(tmp_path, "cpu") == planner.Measured(None, None, None)
    planner.record_throughput(tmp_path, "cpu", 1e9, 1.0)  # a damaged entry is replaced, not a crash
    assert planner.measured_throughput(tmp_path, "cpu").rate is not None


def test_a_worker_records_what_it_sustained(tmp_path: Path) -> None:
    from tasks.worker import run_unit
    from tests.tasks.test_worker_unit import Recording, _unit

    settings = load_settings(data_dir=tmp_path)
    assert planner.measured_throughput(tmp_path, "cpu").rate is None
    run_unit(_unit(400, [0.01, 0.02]), settings, Recording())
    m = planner.measured_throughput(tmp_path, "cpu")
    assert m.rate is not None and m.setup_s is not None
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
