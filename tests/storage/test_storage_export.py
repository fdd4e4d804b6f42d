"""export_points: straight from the DuckDB file when it can be opened, through the owning recorder
(another process, holding the lock) when it cannot."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from storage import run_arrays
from storage.bus import open_publisher
from storage.events import FinishedEvent
from storage.export import ExportError, export_points
from storage.metric_store import MetricStore, StoreLocked
from storage.recorder import Recorder
from storage.registry import Registry
from storage.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def _wait_locked(settings: Settings, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the recorder process exited"
        try:
            MetricStore(settings.metrics_path, read_only=True).close()
        except StoreLocked:
            return
        time.sleep(0.1)
    raise AssertionError("the recorder process never took the metrics file")


def _recorder_process(settings: Settings) -> subprocess.Popen:
    """A standalone recorder in another process, once it holds the metrics file (the caller stops it)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("GAMMA_LAB_BROKER_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "storage.recorder", "--data-dir", str(settings.data_dir),
                             "--log-level", "WARNING"], env=env, cwd=REPO)
    try:
        _wait_locked(settings, proc)
    except BaseException:
        proc.kill()
        proc.wait(30)
        raise
    return proc


def test_export_direct_then_through_recorder_process(settings: Settings, make_configs, tmp_path: Path) -> None:
    configs = make_configs()[:3]
    ids = [c.run_id for c in configs]
    with Registry(settings.registry_url) as reg:
        sid = reg.create_sweep("export", "t", {})
        reg.add_runs(sid, configs)
    pub = open_publisher(settings)
    steps = np.arange(100)
    for i, rid in enumerate(ids):
        pub.points(rid, 0, steps, ["train_loss"] * 100, np.exp(-steps / 30.0) * (i + 1))
        pub.points(rid, 0, [0, 50, 99], ["test_acc"] * 3, [0.1, 0.5, np.nan])
    with Recorder(settings) as rec:
        rec.drain()
        # the recorder runs in this process: its own store is read directly
        inside = export_points(settings, ids[:1], tmp_path / "inside.parquet")
        assert inside.via == "direct" and inside.rows == 103

    direct = export_points(settings, ids[:2], tmp_path / "direct.parquet")
    assert direct.via == "direct" and direct.rows == 2 * 103
    table = pq.read_table(direct.path).to_pandas()
    assert list(table.columns) == ["run_id", "step", "metric", "value"]
    assert set(table["run_id"]) == set(ids[:2])
    first = table[(table.run_id == ids[1]) & (table.metric == "train_loss")]
    assert first["step"].tolist() == list(range(100))
    assert np.allclose(first["value"], np.exp(-steps / 30.0) * (ids.index(ids[1]) + 1))
    assert table[table.metric == "test_acc"]["value"].isna().sum() == 2  # NaN kept as logged

    proc = _recorder_process(settings)
    try:
        # published before the request: the recorder ingests it first, so the export includes it
        pub.points(ids[0], 0, np.arange(100, 150), ["train_loss"] * 50, np.zeros(50))
        remote = export_points(settings, None, tmp_path / "out" / "sweep.parquet", timeout_s=60, sweep_id=sid)
        assert remote.via == "recorder" and remote.rows == 3 * 103 + 50
        frame = pq.read_table(remote.path).to_pandas()
        assert len(frame) == remote.rows and set(frame["run_id"]) == set(ids)
        assert frame[(frame.run_id == ids[0]) & (frame.metric == "train_loss")]["step"].max() == 149
        by_ids = export_points(settings, ids[2:], tmp_path / "one.parquet", timeout_s=60)
        assert by_ids.via == "recorder" and by_ids.rows == 103
        # nothing half-written or left behind in the data folder
        assert list((settings.data_dir / "exports").iterdir()) == []
        # bad requests: unknown ids fail before anything is asked; an escaping path is set aside
        with pytest.raises(ExportError, match="run_ids"):
            export_points(settings, ["nope"], tmp_path / "x.parquet", timeout_s=5)
        with pytest.raises(ExportError, match="sweep_id"):
            export_points(settings, None, tmp_path / "x.parquet", timeout_s=5, sweep_id="nope")
        pub.publish({"type": "export", "request_id": "bad", "path": "../escape.parquet", "run_ids": ids})
        deadline = time.monotonic() + 30
        rejected = settings.spool_dir / "rejected"
        while not any(p.name.endswith(".reason") for p in rejected.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.1)
        reasons = [p.read_text() for p in rejected.iterdir() if p.name.endswith(".reason")]
        assert reasons and "export" in reasons[0]
        assert not (settings.data_dir.parent / "escape.parquet").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    pub.close()


def test_export_times_out_with_a_clear_message_when_no_recorder_answers(settings: Settings, make_configs,
                                                                          tmp_path: Path) -> None:
    configs = make_configs()[:1]
    with Registry(settings.registry_url) as reg:
        reg.add_runs(reg.create_sweep("e", "t", {}), configs)
    # another process holds the file read-write but does not record (e.g. a stuck tool)
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('ok', flush=True); time.sleep(60)", str(settings.metrics_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        with pytest.raises(ExportError, match="no recorder answered"):
            export_points(settings, [configs[0].run_id], tmp_path / "x.parquet", timeout_s=1.0)
    finally:
        holder.kill()
        holder.wait()


def test_final_function_snapshots_read_directly_and_through_the_recorder_process(
    settings: Settings, make_configs, tmp_path: Path
) -> None:
    """`gamma-lab reproduce same-function` run beside a dashboard: the dashboard's recorder holds the
    metrics file, so the snapshots come back through it (an .npz answer), equal to a direct read."""
    from storage.export import export_arrays

    configs = make_configs()[:3]
    ids = [c.run_id for c in configs]
    with Registry(settings.registry_url) as reg:
        reg.add_runs(reg.create_sweep("arrays", "t", {}), configs)
    rng = np.random.default_rng(0)
    sent = {rid: {"output": rng.standard_normal((4, 2)).astype(np.float32),
                  "gram": rng.standard_normal((4, 4)).astype(np.float32)} for rid in ids[:2]}
    pub = open_publisher(settings)
    for rid in ids:
        pub.publish(FinishedEvent(rid, 0, "done", steps_done=1).wire()
                    | ({"arrays": run_arrays.encode(sent[rid])} if rid in sent else {}))
    with Recorder(settings) as rec:
        rec.drain()
    direct = export_arrays(settings, ids)
    assert set(direct) == set(ids[:2])  # the third run kept no snapshot
    for rid, arrays in sent.items():
        assert set(direct[rid]) == {"output", "gram"}
        assert all(np.array_equal(direct[rid][n], a) for n, a in arrays.items())

    proc = _recorder_process(settings)
    try:
        remote = export_arrays(settings, ids, timeout_s=60)
        assert set(remote) == set(direct)
        for rid in remote:
            assert all(np.array_equal(remote[rid][n], direct[rid][n]) for n in direct[rid])
        assert list((settings.data_dir / "exports").iterdir()) == []
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    pub.close()
