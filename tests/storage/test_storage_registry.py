import json
import sqlite3
from pathlib import Path

import pytest

from storage.registry import SCHEMA_VERSION, Registry, RegistryError


def _exercise(reg: Registry, configs: list) -> None:
    sid = reg.create_sweep("grid", "alice", {"grid": [1, 2]}, executor="local")
    assert reg.get_sweep(sid)["device"] == "cpu"
    gpu = reg.create_sweep("gpu", "alice", {}, executor="celery", device="cuda")
    assert reg.get_sweep(gpu)["device"] == "cuda"
    with pytest.raises(RegistryError, match="device"):
        reg.create_sweep("bad", "alice", {}, device="")
    first = reg.add_runs(sid, configs)
    assert sorted(first.new) == sorted(c.run_id for c in configs) and first.existing == []
    # a second sweep re-launching some cells reuses their rows
    sid2 = reg.create_sweep("again", "bob", {})
    again = reg.add_runs(sid2, configs[:3])
    assert again.new == [] and sorted(again.existing) == sorted(c.run_id for c in configs[:3])
    assert sorted(reg.sweeps_of_run(configs[0].run_id)) == sorted([sid, sid2])

    rid = configs[0].run_id
    assert reg.mark_running(rid, 0, "w1", now=100.0)
    assert reg.heartbeat([rid], 0, "w1", now=110.0) == 1
    assert reg.get_sweep(sid)["status"] == "running"
    assert reg.finish(rid, 0, "done", steps_done=50, summary={"final_train_loss": 0.5, "x": float("nan")})
    run = reg.get_run(rid)
    assert run["status"] == "done" and run["steps_done"] == 50 and run["summary"]["x"] is None
    assert run["depth"] == 3 and run["width"] == 8 and run["config"]["model"]["width"] == 8

    # rerun: a new attempt; the old attempt's late events change nothing
    assert reg.reset_for_rerun([rid]) == {rid: 1}
    assert not reg.finish(rid, 0, "failed", error="late")
    assert not reg.mark_running(rid, 0, "old")
    assert reg.get_run(rid)["status"] == "queued"
    assert reg.mark_running(rid, 1, "w2")

    # lost: a running run without heartbeats
    other = configs[1].run_id
    reg.mark_running(other, 0, "w3", now=1000.0)
    assert reg.mark_lost(60.0, now=1100.0) == [other]
    assert reg.get_run(other)["status"] == "lost"
    assert reg.heartbeat([other], 0, "w3") == 1  # alive after all
    assert reg.get_run(other)["status"] == "running"

    # cancel a sweep: queued -> cancelled now, running flagged
    n = reg.request_cancel(sid)
    assert n >= 2
    flagged = reg.is_cancel_requested([c.run_id for c in configs])
    assert rid in flagged and other in flagged
    counts = reg.get_sweep(sid)["counts"]
    assert counts["cancelled"] == len(configs) - 2 and counts["running"] == 2
    assert {r["status"] for r in reg.list_runs(sid, status="running")} == {"running"}
    assert len(reg.list_runs(sid, gamma=0.1, eta=0.1)) == 2
    listed = reg.list_sweeps()
    assert {s["id"] for s in listed} == {sid, sid2, gpu}
    with pytest.raises(RegistryError, match="status"):
        reg.list_runs(sid, status="exploded")
    with pytest.raises(RegistryError, match="status"):
        reg.finish(rid, 1, "queued")
    with pytest.raises(RegistryError, match="sweep_id"):
        reg.add_runs("nope", configs)


def test_sqlite_registry(tmp_path: Path, make_configs) -> None:
    reg = Registry(f"sqlite:///{tmp_path / 'r.sqlite'}")
    assert reg.version == SCHEMA_VERSION
    _exercise(reg, make_configs())
    with sqlite3.connect(tmp_path / "r.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_postgres_registry(pg_registry: Registry, make_configs) -> None:
    assert pg_registry.version == SCHEMA_VERSION
    _exercise(pg_registry, make_configs())


# A frozen copy of the v1 DDL as released: do not edit (it is what old data folders hold).
V1_DDL = [
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    "INSERT INTO schema_version VALUES (1)",
    "CREATE TABLE sweeps (id VARCHAR(64) PRIMARY KEY, name VARCHAR(200) NOT NULL, owner VARCHAR(200) NOT NULL, "
    "created FLOAT NOT NULL, spec TEXT NOT NULL, status VARCHAR(20) NOT NULL, executor VARCHAR(20) NOT NULL)",
    "CREATE TABLE runs (run_id VARCHAR(64) PRIMARY KEY, gamma FLOAT NOT NULL, eta FLOAT NOT NULL, "
    "seed INTEGER NOT NULL, config TEXT NOT NULL, shape_key VARCHAR(64) NOT NULL, status VARCHAR(20) NOT NULL, "
    "attempt INTEGER NOT NULL, worker VARCHAR(200), created FLOAT NOT NULL, started FLOAT, ended FLOAT, "
    "heartbeat FLOAT, error TEXT, diverged_step BIGINT, steps_done BIGINT, summary TEXT, "
    "cancel_requested BOOLEAN NOT NULL)",
    "CREATE TABLE sweep_runs (sweep_id VARCHAR(64) NOT NULL REFERENCES sweeps (id), run_id VARCHAR(64) NOT NULL "
    "REFERENCES runs (run_id), added FLOAT NOT NULL, PRIMARY KEY (sweep_id, run_id))",
    "CREATE INDEX ix_sweep_runs_run ON sweep_runs (run_id)",
    "CREATE INDEX ix_runs_status ON runs (status)",
]


def test_v1_data_folder_migrates_without_losing_rows(tmp_path: Path, make_configs) -> None:
    path = tmp_path / "registry.sqlite"
    configs = make_configs()
    with sqlite3.connect(path) as conn:
        for ddl in V1_DDL:
            conn.execute(ddl)
        conn.execute("INSERT INTO sweeps VALUES ('s1', 'old', 'carol', 1.0, '{}', 'done', 'local')")
        for i, c in enumerate(configs):
            conn.execute(
                "INSERT INTO runs (run_id, gamma, eta, seed, config, shape_key, status, attempt, created, "
                "summary, cancel_requested) VALUES (?, ?, ?, ?, ?, ?, 'done', 0, 1.0, ?, 0)",
                (c.run_id, c.gamma, c.eta, c.seed, c.to_json(), c.shape_key, json.dumps({"final_train_loss": i})),
            )
            conn.execute("INSERT INTO sweep_runs VALUES ('s1', ?, 1.0)", (c.run_id,))
    reg = Registry(f"sqlite:///{path}")
    assert reg.version == SCHEMA_VERSION
    runs = reg.list_runs("s1")
    assert len(runs) == len(configs)
    assert all(r["depth"] == 3 and r["width"] == 8 for r in runs)  # backfilled from config JSON
    assert sorted(r["summary"]["final_train_loss"] for r in runs) == list(range(len(configs)))
    assert reg.get_sweep("s1")["counts"]["done"] == len(configs)
    assert reg.get_sweep("s1")["device"] == "cpu"  # v3: sweeps from before the device was stored ran on cpu
    reg.close()
    assert Registry(f"sqlite:///{path}").version == SCHEMA_VERSION  # reopening is a no-op


# A frozen copy of the v2 schema as released (v1 + the depth/width columns): do not edit.
V2_DDL = [
    *(ddl.replace("VALUES (1)", "VALUES (2)") for ddl in V1_DDL),
    "ALTER TABLE runs ADD COLUMN depth INTEGER",
    "ALTER TABLE runs ADD COLUMN width INTEGER",
]


def test_v2_data_folder_gets_the_device_column_without_losing_rows(tmp_path: Path, make_configs) -> None:
    # v3 stores each sweep's launch device; a data folder written by the previous release keeps every
    # sweep, run and link, and its sweeps read as launched on 'cpu' (the only default there was).
    path = tmp_path / "registry.sqlite"
    configs = make_configs()
    with sqlite3.connect(path) as conn:
        for ddl in V2_DDL:
            conn.execute(ddl)
        for sid, executor in (("s1", "local"), ("s2", "celery")):
            conn.execute("INSERT INTO sweeps VALUES (?, 'old', 'carol', 1.0, '{}', 'done', ?)", (sid, executor))
        for i, c in enumerate(configs):
            conn.execute(
                "INSERT INTO runs (run_id, gamma, eta, seed, config, shape_key, status, attempt, created, "
                "summary, cancel_requested, depth, width) VALUES (?, ?, ?, ?, ?, ?, 'done', 0, 1.0, ?, 0, 3, 8)",
                (c.run_id, c.gamma, c.eta, c.seed, c.to_json(), c.shape_key, json.dumps({"final_train_loss": i})),
            )
            conn.execute("INSERT INTO sweep_runs VALUES ('s1', ?, 1.0)", (c.run_id,))
        conn.execute("INSERT INTO sweep_runs VALUES ('s2', ?, 2.0)", (configs[0].run_id,))
    reg = Registry(f"sqlite:///{path}")
    assert reg.version == SCHEMA_VERSION >= 3
    sweeps = {s["id"]: s for s in reg.list_sweeps()}
    assert {(k, s["executor"], s["device"]) for k, s in sweeps.items()} == {
        ("s1", "local", "cpu"),
        ("s2", "celery", "cpu"),
    }
    runs = reg.list_runs("s1")
    assert len(runs) == len(configs) and all(r["depth"] == 3 and r["width"] == 8 for r in runs)
    assert sorted(r["summary"]["final_train_loss"] for r in runs) == list(range(len(configs)))
    assert reg.sweeps_of_run(configs[0].run_id) == ["s2", "s1"]  # the sweep it joined last first
    # new sweeps store theirs next to the old ones
    sid = reg.create_sweep("new", "dave", {}, executor="celery", device="cuda:1")
    assert reg.get_sweep(sid)["device"] == "cuda:1" and reg.get_sweep("s2")["device"] == "cpu"
    reg.close()
    assert Registry(f"sqlite:///{path}").version == SCHEMA_VERSION  # reopening is a no-op


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    Registry(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(RegistryError, match="newer"):
        Registry(f"sqlite:///{path}")
