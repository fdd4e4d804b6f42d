"""Purge: the sweep, its links and its unshared runs leave the registry (SQLite and PostgreSQL), and
those runs' points leave the DuckDB file -- deleted by the recorder, its one writer, whether that is
another process holding the file or this process recording for a moment. Shared runs stay."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engine.config import ConfigError
from storage import audit
from storage.bus import open_publisher
from storage.metric_store import MetricStore, StoreLocked
from storage.recorder import Recorder
from storage.registry import Registry
from storage.settings import Settings, load_settings
from tasks import api
from tasks.access import Actor, NotAllowed

REPO = Path(__file__).resolve().parents[2]
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
ALICE, BOB = Actor("alice", False, True), Actor("bob", False, True)


@pytest.fixture(params=["sqlite", "postgresql"])
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Settings whose registry is an SQLite file, or a private schema of the local PostgreSQL."""
    data = tmp_path / "data"
    if request.param == "sqlite":
        settings = load_settings(data_dir=data, auth="local")
        settings.ensure_dirs()
        yield settings
        return
    try:
        import psycopg

        psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 not reachable: {exc}")
    schema = f"gl_test_{uuid.uuid4().hex[:10]}"
    Registry(PG_URL, schema=schema).close()
    settings = load_settings(data_dir=data, registry_url=f"{PG_URL}?options=-csearch_path%3D{schema}")
    settings.ensure_dirs()
    yield settings
    with Registry(PG_URL, schema=schema) as reg, reg.engine.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


def _two_sweeps(settings: Settings, make_configs) -> tuple[str, str, list[str]]:
    """alice's sweep A (runs 0-5) and bob's sweep B (runs 4-7: 4 and 5 shared), every run finished
    with 20 points recorded. Returns (A, B, run ids 0-7)."""
    configs = make_configs(gammas=(0.1, 1.0), etas=(0.1, 1.0), seeds=(0, 1))
    ids = [c.run_id for c in configs]
    with Registry(settings.registry_url) as reg:
        a = reg.create_sweep("a", "alice", {})
        reg.add_runs(a, configs[:6])
        b = reg.create_sweep("b", "bob", {})
        reg.add_runs(b, configs[4:])
    with open_publisher(settings) as pub:
        for rid in ids:
            pub.started(rid, 0, "w")
            pub.points(rid, 0, np.arange(20), ["train_loss"] * 20, np.linspace(1, 0, 20))
            pub.finished(rid, 0, "done", steps_done=20)
    with Recorder(settings) as rec:
        rec.drain()
    return a, b, ids


def _points(settings: Settings, ids: list[str]) -> list[int]:
    """Each run's points, read from the file itself by a fresh read-only open; every point in the file
    belongs to one of them (none left behind without its run key)."""
    with MetricStore(settings.metrics_path, read_only=True) as store:
        counts = [store.count_points(rid) for rid in ids]
        assert store.count_points() == sum(counts)
        with store.reader() as cur:  # no summary or ingested mark left of a deleted run either
            for table in ("summaries", "ingested"):
                assert cur.execute(f"SELECT count(DISTINCT run_key) FROM {table}").fetchall()[0][0] == sum(
                    1 for n in counts if n), table
        return counts


def _recorder_process(settings: Settings) -> subprocess.Popen:
    """`python -m storage.recorder` on the data folder, once it holds the metrics file."""
    env = dict(os.environ, PYTHONPATH=str(REPO), GAMMA_LAB_REGISTRY_URL=settings.registry_url)
    env.pop("GAMMA_LAB_BROKER_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "storage.recorder", "--data-dir", str(settings.data_dir),
                             "--log-level", "WARNING"], env=env, cwd=REPO)
    while True:  # held: a read-only open is refused
        assert proc.poll() is None, "the recorder process exited"
        try:
            MetricStore(settings.metrics_path, read_only=True).close()
        except StoreLocked:
            return proc
        time.sleep(0.1)


def test_purge_through_a_recorder_process_deletes_only_unshared_points(lab: Settings, make_configs) -> None:
    a, b, ids = _two_sweeps(lab, make_configs)
    assert _points(lab, ids) == [20] * 8
    proc = _recorder_process(lab)
    try:
        plan = api.purge_plan(lab, a)  # counted by the recorder (dry run): the file is held
        assert plan.runs_deleted == sorted(ids[:4]) and plan.runs_kept == {ids[4]: [b], ids[5]: [b]}
        assert plan.points == 80
        with pytest.raises(NotAllowed, match=r"launcher \(alice\)"):
            api.purge(lab, a, confirm=a, actor=BOB)
        with pytest.raises(ConfigError, match="confirm"):
            api.purge(lab, a, confirm="yes", actor=ALICE)
        done = api.purge(lab, a, confirm=a, actor=ALICE)
        assert done.points == 80 and done.runs_deleted == plan.runs_deleted
    finally:
        proc.terminate()
        proc.wait(30)
    assert _points(lab, ids) == [0] * 4 + [20] * 4
    with Registry(lab.registry_url) as reg:
        assert reg.get_sweep(a) is None and reg.existing_run_ids(ids) == set(ids[4:])
        assert reg.get_sweep(b)["n_runs"] == 4 and reg.get_sweep(b)["counts"]["done"] == 4
        row = audit.trail(reg, target=a)[0]
    assert (row["actor"], row["action"]) == ("alice", "purge") and "4 run(s) deleted" in row["detail"]


def test_purge_records_here_when_nobody_records_and_refuses_while_running(lab: Settings, make_configs) -> None:
    a, b, ids = _two_sweeps(lab, make_configs)
    with Registry(lab.registry_url) as reg:
        reg.reset_for_rerun([ids[6]], sweep_id=b)
        reg.mark_running(ids[6], 1, "w")
    with pytest.raises(ConfigError, match="cancel it first"):
        api.purge(lab, b, confirm=b, actor=BOB)
    with Registry(lab.registry_url) as reg:
        assert reg.get_sweep(b)["n_runs"] == 4
    assert _points(lab, ids) == [20] * 8
    driver = lab.data_dir / "adaptive" / f"{a}.pid"  # an adaptive driver between two rounds (a live pid)
    driver.parent.mkdir(parents=True, exist_ok=True)
    driver.write_text(str(os.getpid()))
    with pytest.raises(ConfigError, match="adaptive rounds still to come"):
        api.purge(lab, a, confirm=a, actor=ALICE)
    driver.unlink()
    assert api.purge_plan(lab, a).points == 80  # read directly: nobody holds the file
    # a late points batch of a purged run, still on the bus: it never lands in the file
    with open_publisher(lab) as pub:
        pub.points(ids[0], 0, np.arange(20, 30), ["train_loss"] * 10, np.zeros(10))
    done = api.purge(lab, a, confirm=a, actor=Actor("root", True, True))  # an admin may
    assert done.points == 80 and len(done.runs_deleted) == 4
    assert _points(lab, ids) == [0] * 4 + [20] * 4


def test_a_request_the_store_cannot_carry_out_is_answered_with_the_reason(lab: Settings, make_configs) -> None:
    """The recorder answers a purge it cannot carry out with the reason instead of failing its step
    for ever (which would stop all recording)."""
    import json

    from storage.purge import PURGE_DIR, answer_request

    _, _, ids = _two_sweeps(lab, make_configs)
    event = {"type": "purge", "request_id": "r1", "run_ids": ids[:1], "path": f"{PURGE_DIR}/r1.json"}
    with MetricStore(lab.metrics_path, read_only=True) as store:  # a store that refuses deletes
        answer_request(lab, store, event)
        assert answer_request(lab, store, {**event, "path": f"{PURGE_DIR}/r2.json", "dry_run": True}) is None
    reply = json.loads((lab.data_dir / PURGE_DIR / "r1.json").read_text())
    assert "read-only" in reply["error"]
    assert json.loads((lab.data_dir / PURGE_DIR / "r2.json").read_text()) == {"points": 20}
