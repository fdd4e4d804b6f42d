"""Every data page while another process records: one clear message naming that process, never a
raw StoreLocked traceback (DuckDB lets one process open the metrics file while it writes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app.ui import resources
from engine.config import ModelConfig, RunConfig
from storage.bus import open_publisher
from storage.metric_store import MetricStore
from storage.recorder import Recorder, read_owner, request_path
from storage.registry import Registry
from storage.settings import Settings, load_settings

from .plotly_json import arr

REPO = Path(__file__).resolve().parents[2]
MAIN = str(REPO / "app" / "main.py")
PAGES = ["portrait", "trajectories", "overlays", "diagnostics", "compare"]


def seed_sweep(settings: Settings, steps: int = 50) -> list[str]:
    """A finished 2 γ × 2 η sweep written through the bus and a recorder (no training). Run ids."""
    settings.ensure_dirs()
    configs = [
        RunConfig(model=ModelConfig(width=8, depth=3), gamma=g, eta=e, seed=0) for g in (0.1, 1.0) for e in (0.01, 0.1)
    ]
    reg = Registry(settings.registry_url)
    sweep_id = reg.create_sweep("held", "t", {"train": {"steps": steps}, "model": {"depth": 3}})
    reg.add_runs(sweep_id, configs)
    reg.close()
    pub = open_publisher(settings)
    x = np.arange(steps)
    for i, c in enumerate(configs):
        pub.started(c.run_id, 0, "w")
        pub.points(c.run_id, 0, x, ["train_loss"] * steps, np.exp(-x / (10.0 + i)))
        pub.finished(
            c.run_id,
            0,
            "done",
            steps_done=steps,
            summary={"final_train_loss": float(np.exp(-(steps - 1) / (10.0 + i)))},
        )
    pub.close()
    with Recorder(settings) as rec:
        rec.drain()
    return [c.run_id for c in configs]


def wait_for_owner(settings: Settings, pid: int, proc: subprocess.Popen[str] | None = None) -> None:
    """Until the owner lock names `pid` (polled; the deadline only stops a hung test)."""
    deadline = time.monotonic() + 60
    while read_owner(settings).pid != pid:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the recorder subprocess exited with {proc.returncode}")
        if time.monotonic() > deadline:
            pytest.fail(f"pid {pid} never recorded (owner: {read_owner(settings)})")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture()
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("GAMMA_LAB_DATA", str(tmp_path / "data"))
    s = load_settings()
    seed_sweep(s)
    return s


HOLD_AS_DASHBOARD = """
import signal, sys, threading
from storage.recorder import Recorder
from storage.settings import load_settings
rec = Recorder(load_settings(), role="dashboard")
signal.signal(signal.SIGTERM, lambda *_: rec._stop.set())
rec.run_forever()
rec.close()
"""


def start(settings: Settings, argv: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "GAMMA_LAB_DATA": str(settings.data_dir)}
    return subprocess.Popen(
        [sys.executable, *argv], cwd=REPO, env=env, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


@pytest.fixture()
def other_dashboard(settings: Settings) -> Iterator[subprocess.Popen[str]]:
    """A real process recording as a dashboard does: it never hands recording over."""
    proc = start(settings, ["-c", HOLD_AS_DASHBOARD])
    try:
        wait_for_owner(settings, proc.pid, proc)
        yield proc
    finally:
        stop(proc)


@pytest.fixture()
def other_recorder(settings: Settings) -> Iterator[subprocess.Popen[str]]:
    """A real standalone `gamma-lab recorder` holding the metric store."""
    proc = start(settings, ["-m", "app.cli", "recorder"])
    try:
        wait_for_owner(settings, proc.pid, proc)
        yield proc
    finally:
        stop(proc)


def test_data_pages_name_the_recording_process_instead_of_a_traceback(
    settings: Settings, other_dashboard: subprocess.Popen[str]
) -> None:
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.run()
    for page in PAGES:
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception, (page, at.exception)
        infos = " ".join(i.value for i in at.info)
        assert f"pid {other_dashboard.pid}" in infos and "another dashboard" in infos, (page, infos)
        assert "Two dashboards on one data folder" in infos
    assert read_owner(settings).pid == other_dashboard.pid  # a dashboard is never asked to hand over
    assert not request_path(settings).exists()


def _stored_points(settings: Settings, run_id: str) -> tuple[int, int]:
    """(points, distinct (attempt, seq, step, metric)) of a run, read once nobody records."""
    store = MetricStore(settings.metrics_path, read_only=True)
    try:
        row = store.conn.execute(
            "SELECT count(*), count(DISTINCT (attempt, seq, step, metric)) FROM points "
            "JOIN run_keys USING (run_key) WHERE run_id = ?",
            [run_id],
        ).fetchone()
    finally:
        store.close()
    assert row is not None
    return int(row[0]), int(row[1])


def test_dashboard_takes_over_from_a_standalone_recorder_which_records_again_after(
    settings: Settings, other_recorder: subprocess.Popen[str]
) -> None:
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.run()  # the dashboard asks the recorder to hand over; it does between two steps
    wait_for_owner(settings, os.getpid(), other_recorder)
    assert read_owner(settings).role == "dashboard"
    res = resources()
    try:
        at.switch_page("views/portrait.py").run()
        assert not at.exception, at.exception
        assert not at.info, [i.value for i in at.info]
        z = arr(json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]["z"])
        assert np.isfinite(z).sum() == 4  # every cell of the 2 × 2 sweep, read from the store
        assert other_recorder.poll() is None  # standing by, not gone
    finally:
        assert res.recorder is not None
        res.recorder.stop()  # this dashboard stops recording
    wait_for_owner(settings, other_recorder.pid, other_recorder)  # the standalone one records again
    assert read_owner(settings).role == "recorder"

    # events published after that are ingested by it
    config = RunConfig(model=ModelConfig(width=8, depth=3), gamma=10.0, eta=0.01, seed=0)
    reg = Registry(settings.registry_url)
    try:
        reg.add_runs(reg.list_sweeps()[0]["id"], [config])
        pub = open_publisher(settings)
        pub.started(config.run_id, 0, "w")
        pub.points(config.run_id, 0, np.arange(7), ["train_loss"] * 7, np.ones(7))
        pub.finished(config.run_id, 0, "done", steps_done=7)
        pub.close()
        deadline = time.monotonic() + 60
        while reg.get_runs([config.run_id])[0]["status"] != "done":
            assert time.monotonic() < deadline, "the standalone recorder did not record the new run"
            time.sleep(0.1)
    finally:
        reg.close()
    stop(other_recorder)
    assert other_recorder.returncode == 0
    assert _stored_points(settings, config.run_id) == (7, 7)
