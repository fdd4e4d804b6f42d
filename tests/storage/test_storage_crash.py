"""kill -9 the recorder mid-ingest, restart: exactly N points. 8 publishers at once: every point once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from storage.bus import STREAM, open_publisher
from storage.metric_store import MetricStore
from storage.recorder import Recorder
from storage.registry import Registry
from storage.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def _register(settings: Settings, configs: list) -> list[str]:
    with Registry(settings.registry_url) as reg:
        sid = reg.create_sweep("crash", "test", {})
        reg.add_runs(sid, configs)
    return [c.run_id for c in configs]


def _publish(settings: Settings, run_ids: list[str], events_per_run: int, points_per_event: int) -> int:
    pub = open_publisher(settings)
    total = 0
    for k in range(events_per_run):
        steps = np.arange(k * points_per_event, (k + 1) * points_per_event)
        events = [pub.points_event(rid, 0, steps, ["train_loss"] * len(steps), np.exp(-steps / 1e4))
                  for rid in run_ids]
        pub.publish_many(events)
        total += len(events) * points_per_event
    pub.close()
    return total


def _env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("GAMMA_LAB_BROKER_URL", None)
    if settings.broker_url:
        env["GAMMA_LAB_BROKER_URL"] = settings.broker_url
    return env


def _remaining(settings: Settings) -> int:
    if settings.broker_url:
        import redis

        return int(redis.Redis.from_url(settings.broker_url).xlen(STREAM))
    return sum(1 for p in settings.spool_dir.iterdir() if p.name.endswith(".evt"))


def _count(settings: Settings) -> tuple[int, int]:
    with MetricStore(settings.metrics_path, read_only=True) as store:
        return store.count_points(), store.count_duplicates()


def _kill_mid_ingest_then_restart(settings: Settings, make_configs) -> None:
    run_ids = _register(settings, make_configs())
    n = _publish(settings, run_ids, events_per_run=60, points_per_event=200)  # 8 runs -> 480 events, 96k points
    start = _remaining(settings)
    cmd = [sys.executable, "-m", "storage.recorder", "--data-dir", str(settings.data_dir), "--max-events", "7",
           "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, env=_env(settings), cwd=REPO)
    deadline = time.monotonic() + 60
    while _remaining(settings) > start - 100 and time.monotonic() < deadline:  # let it get going
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = _remaining(settings)
    assert 0 < left < start, f"the kill should land mid-ingest (left {left} of {start})"
    done = subprocess.run(cmd + ["--once"], env=_env(settings), cwd=REPO, timeout=120)
    assert done.returncode == 0
    stored, duplicates = _count(settings)
    assert duplicates == 0
    assert stored == n


@pytest.mark.slow
def test_kill9_recorder_spool(settings: Settings, make_configs) -> None:
    _kill_mid_ingest_then_restart(settings, make_configs)


@pytest.mark.slow
def test_kill9_recorder_redis(redis_settings: Settings, make_configs) -> None:
    _kill_mid_ingest_then_restart(redis_settings, make_configs)


def test_committed_but_unacked_batch_is_not_stored_twice(settings: Settings, make_configs) -> None:
    """The crash window between DuckDB commit and bus ack, made deterministic."""
    run_ids = _register(settings, make_configs()[:2])
    n = _publish(settings, run_ids, events_per_run=3, points_per_event=10)
    rec = Recorder(settings)
    deliveries = rec.consumer.read(1000, 0.1)
    from storage.metric_store import PointsBatch

    rec.store.ingest([PointsBatch.from_event(d.event) for d in deliveries if d.event])  # committed, no ack
    rec.close()  # "crash"
    rec = Recorder(settings)
    rec.drain()
    assert rec.store.count_points() == n and rec.store.count_duplicates() == 0
    rec.close()


PUBLISHER = textwrap.dedent("""
    import sys, numpy as np
    from storage.settings import load_settings
    from storage.bus import open_publisher
    data_dir, broker, run_id = sys.argv[1], sys.argv[2] or None, sys.argv[3]
    pub = open_publisher(load_settings(data_dir=data_dir, broker_url=broker))
    pub.started(run_id, 0, "w-" + run_id)
    for k in range(40):
        steps = np.arange(k * 50, (k + 1) * 50)
        pub.points(run_id, 0, steps, ["train_loss"] * 50, np.ones(50))
    pub.finished(run_id, 0, "done", steps_done=2000)
""")


def _eight_publishers(settings: Settings, make_configs) -> None:
    run_ids = _register(settings, make_configs(gammas=(0.1, 1.0), etas=(0.1, 1.0), seeds=(0, 1)))
    assert len(run_ids) == 8
    rec = Recorder(settings, max_events=50).start()  # ingests while they write
    procs = [subprocess.Popen([sys.executable, "-c", PUBLISHER, str(settings.data_dir), settings.broker_url or "",
                               rid], env=_env(settings), cwd=REPO) for rid in run_ids]
    for p in procs:
        assert p.wait(120) == 0
    rec.stop()
    rec = Recorder(settings)
    rec.drain()
    for rid in run_ids:
        assert rec.store.count_points(rid) == 2000
    assert rec.store.count_duplicates() == 0
    rec.close()
    with Registry(settings.registry_url) as reg:
        assert {r["status"] for r in reg.get_runs(run_ids)} == {"done"}


@pytest.mark.slow
def test_eight_publishers_spool(settings: Settings, make_configs) -> None:
    _eight_publishers(settings, make_configs)


@pytest.mark.slow
def test_eight_publishers_redis(redis_settings: Settings, make_configs) -> None:
    _eight_publishers(redis_settings, make_configs)
