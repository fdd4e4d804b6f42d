"""The queue path with real parts: a real redis-server on a free port, real Celery worker processes
(`gamma-lab worker`), the real recorder (in this process), a real SQLite registry and DuckDB file."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from storage.recorder import Recorder
from storage.registry import Registry
from storage.settings import load_settings
from tasks import api
from tasks.spec import SweepSpec

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")]


@pytest.fixture()
def lab(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    data = tmp_path / "data"
    for k in list(os.environ):
        if k.startswith("GAMMA_LAB_"):
            monkeypatch.delenv(k)
    env = {"GAMMA_LAB_DATA": str(data), "GAMMA_LAB_BROKER_URL": redis_url, "GAMMA_LAB_HEARTBEAT_S": "0.5",
           "GAMMA_LAB_LOST_AFTER_S": "3"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = load_settings()
    settings.ensure_dirs()
    recorder = Recorder(settings).start()
    workers: list[subprocess.Popen[bytes]] = []

    def start_worker() -> subprocess.Popen[bytes]:
        log = open(data / f"worker{len(workers)}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--queue", "cpu", "--device", "cpu",
                                 "--loglevel", "WARNING"], env={**os.environ, **env, "GAMMA_LAB_TORCH_THREADS": "1"},
                                stdout=log, stderr=subprocess.STDOUT)
        workers.append(proc)
        return proc

    class Lab:
        pass

    lab = Lab()
    lab.settings, lab.start_worker, lab.data = settings, start_worker, data  # type: ignore[attr-defined]
    yield lab
    for p in workers:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in workers:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
    recorder.stop()


def _spec(steps: int, eta: list[float], seeds: list[int] | None = None) -> SweepSpec:
    return SweepSpec.from_dict({
        "name": "celery-test", "model": {"width": 16, "depth": 3},
        "data": {"dataset": "teacher", "input_dim": 8, "n_classes": 2},
        "train": {"steps": steps, "batch_size": 16, "eval_points": 3, "metrics": ["test"]},
        "grid": {"gamma": [1.0], "eta": eta, "seeds": seeds or [0]},
    })


def _until(cond: Callable[[], bool], timeout: float = 240, what: str = "condition") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _points(settings: Any, run_id: str, attempt: int) -> list[tuple[int, str]]:
    from storage.metric_store import open_reader

    store, owned = open_reader(settings.metrics_path)
    assert store is not None and not owned  # the recorder of this process owns it
    return store.cursor().execute(
        "SELECT p.step, p.metric FROM points p JOIN run_keys k ON p.run_key = k.run_key "
        "WHERE k.run_id = ? AND p.attempt = ?", [run_id, attempt]).fetchall()


def test_sweep_end_to_end_through_the_queue(lab: Any) -> None:
    lab.start_worker()
    spec = _spec(50, [0.01, 100.0], seeds=[0, 1])
    sweep_id = api.submit(spec, lab.settings, executor="celery")
    _until(lambda: api.is_settled(lab.settings, sweep_id), what="the sweep to finish")
    counts = api.sweep_progress(lab.settings, sweep_id)
    assert counts["done"] == 2 and counts["diverged"] == 2
    with Registry(lab.settings.registry_url) as reg:
        for r in reg.list_runs(sweep_id, status="done"):
            pts = _points(lab.settings, r["run_id"], r["attempt"])
            train = [s for s, m in pts if m == "train_loss"]
            assert sorted(train) == list(range(50))


def test_killed_worker_runs_go_lost_and_rerun_completes_without_duplicates(lab: Any) -> None:
    worker = lab.start_worker()
    steps = 4000
    spec = _spec(steps, [0.01, 0.02])
    sweep_id = api.submit(spec, lab.settings, executor="celery")
    reg = Registry(lab.settings.registry_url)
    run_ids = [r["run_id"] for r in reg.list_runs(sweep_id)]
    _until(lambda: all(len(_points(lab.settings, rid, 0)) > 0 for rid in run_ids), what="points of attempt 0")
    os.kill(worker.pid, signal.SIGKILL)  # mid-unit
    worker.wait(10)
    _until(lambda: {r["status"] for r in reg.list_runs(sweep_id)} == {"lost"}, what="runs marked lost")
    partial = {rid: len(_points(lab.settings, rid, 0)) for rid in run_ids}
    assert all(0 < n for n in partial.values())  # the partial series is kept

    lab.start_worker()
    assert sorted(api.rerun(lab.settings, sweep_id)) == sorted(run_ids)
    _until(lambda: api.is_settled(lab.settings, sweep_id), what="the rerun to finish")
    for r in reg.list_runs(sweep_id):
        assert r["status"] == "done" and r["attempt"] == 1 and r["steps_done"] == steps
        pts = _points(lab.settings, r["run_id"], 1)
        assert len(pts) == len(set(pts))  # no duplicate (step, metric)
        assert sorted(s for s, m in pts if m == "train_loss") == list(range(steps))
        assert len(_points(lab.settings, r["run_id"], 0)) == partial[r["run_id"]]  # old attempt untouched
    reg.close()


def test_running_sweep_cancelled(lab: Any) -> None:
    lab.start_worker()
    steps = 200_000
    sweep_id = api.submit(_spec(steps, [0.01, 0.02]), lab.settings, executor="celery")
    reg = Registry(lab.settings.registry_url)
    _until(lambda: {r["status"] for r in reg.list_runs(sweep_id)} == {"running"}, what="runs running")
    assert api.cancel(lab.settings, sweep_id) == 2
    _until(lambda: {r["status"] for r in reg.list_runs(sweep_id)} == {"cancelled"}, what="runs cancelled")
    for r in reg.list_runs(sweep_id):
        assert 0 < r["steps_done"] < steps
        train = [s for s, m in _points(lab.settings, r["run_id"], r["attempt"]) if m == "train_loss"]
        assert max(train) == r["steps_done"] - 1  # stopped at a flush, everything before it stored
    reg.close()
