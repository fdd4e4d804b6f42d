"""Every data page while another process records: one clear message naming that process, never a
raw StoreLocked traceback (DuckDB lets one process open the metrics file while it writes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from engine.config import ModelConfig, RunConfig
from storage.bus import open_publisher
from storage.recorder import Recorder, read_owner
from storage.registry import Registry
from storage.settings import Settings, load_settings

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


@pytest.fixture()
def other_recorder(settings: Settings) -> Iterator[subprocess.Popen[str]]:
    """A real `gamma-lab recorder` process holding the metric store."""
    env = {**os.environ, "GAMMA_LAB_DATA": str(settings.data_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "recorder"],
        cwd=REPO,
        env=env,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_owner(settings, proc.pid, proc)
        yield proc
    finally:
        stop(proc)


def test_data_pages_name_the_recording_process_instead_of_a_traceback(
    settings: Settings, other_recorder: subprocess.Popen[str]
) -> None:
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.run()
    for page in PAGES:
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception, (page, at.exception)
        infos = " ".join(i.value for i in at.info)
        assert f"pid {other_recorder.pid}" in infos and "gamma-lab recorder" in infos, (page, infos)
        assert "as soon as it can" in infos
