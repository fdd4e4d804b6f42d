"""A dashboard opened while `gamma-lab sweep --wait` records takes recording over mid-sweep: the
CLI hands over between two steps, keeps waiting (the statuses now come from the dashboard's
recorder) and exits 0, and every point is stored exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.ui import Resources
from storage.metric_store import MetricStore
from storage.recorder import read_owner
from storage.registry import Registry
from storage.settings import load_settings

pytestmark = pytest.mark.slow  # a real sweep in a subprocess: about 20 s
REPO = Path(__file__).resolve().parents[2]
STEPS = 1000
SPEC = f"""
name = "handover"
[model]
width = 16
[data]
dataset = "teacher"
input_dim = 8
n_classes = 2
[train]
steps = {STEPS}
batch_size = 16
[grid]
gamma = [0.1, 1.0]
eta = [0.01, 0.1]
seeds = [0, 1]
"""


def _until(what: str, ok: object, proc: subprocess.Popen[str]) -> None:
    """Poll `ok()` (the deadline only stops a hung test)."""
    deadline = time.monotonic() + 120
    while not ok():  # type: ignore[operator]
        if proc.poll() is not None:
            pytest.fail(f"the CLI exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"never: {what}")
        time.sleep(0.05)


def test_sweep_wait_hands_recording_to_a_dashboard_mid_sweep(tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings = load_settings(data_dir=data)
    settings.ensure_dirs()
    spec = tmp_path / "handover.toml"
    spec.write_text(SPEC)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAMMA_LAB_")}
    env.update(GAMMA_LAB_DATA=str(data), GAMMA_LAB_WORKERS="1")
    err = tmp_path / "cli.err"
    with err.open("w") as err_file:
        cli = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "sweep", str(spec), "--wait"],
            cwd=REPO,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=err_file,
        )
    res = Resources(settings=settings, source=None, recorder=None, recorder_note="another process records")
    reg = Registry(settings.registry_url)
    try:
        _until("the CLI records", lambda: read_owner(settings).pid == cli.pid, cli)

        def training() -> bool:
            sweeps = reg.list_sweeps()
            return bool(sweeps) and sweeps[0]["counts"].get("running", 0) > 0

        _until("a run is recorded as running", training, cli)  # the CLI's recorder saw it start
        assert not res.take_over_if_free(every_s=0.0)  # asks the CLI to hand over
        _until("the dashboard records", lambda: res.recorder is not None, cli)
        assert read_owner(settings).pid == os.getpid() and read_owner(settings).role == "dashboard"
        out, _ = cli.communicate(timeout=300)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        reg.close()
        if res.recorder is not None:
            res.recorder.stop()
    log = err.read_text()
    assert cli.returncode == 0, log[-3000:]
    assert f"handed recording over to pid {os.getpid()}" in log
    assert res.recorder is not None and res.recorder.stats["events"] > 0  # it recorded part of the sweep

    store = MetricStore(settings.metrics_path, read_only=True)
    try:
        rows = store.conn.execute(
            "SELECT run_id, count(*), count(DISTINCT step), min(step), max(step) FROM points "
            "JOIN run_keys USING (run_key) WHERE metric = 'train_loss' GROUP BY run_id"
        ).fetchall()
        dup_batches = store.conn.execute(
            "SELECT count(*) FROM (SELECT run_key, attempt, seq FROM ingested GROUP BY ALL HAVING count(*) > 1)"
        ).fetchone()
    finally:
        store.close()
    sweep_id = out.strip().splitlines()[-1]
    reg = Registry(settings.registry_url)
    try:
        runs = {r["run_id"]: r for r in reg.get_runs(reg.run_ids_for(sweep_id))}
    finally:
        reg.close()
    assert len(runs) == 8 and {r["status"] for r in runs.values()} == {"done"}
    assert dup_batches == (0,)
    assert {r[0] for r in rows} == set(runs)
    for run_id, n, distinct, first, last in rows:
        assert (n, distinct, first, last) == (STEPS, STEPS, 0, STEPS - 1), run_id
