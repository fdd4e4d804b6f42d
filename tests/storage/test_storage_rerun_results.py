"""A finished attempt is never hidden by a later one that did not finish (issue 9, item 8).

A run is shared by every sweep that launched its cell; the registry keeps its current attempt and,
since schema v4, its newest finished (done/diverged) attempt. These tests hold the registry's rules
(the shown attempt, the effective status, the status a sweep reads), the SQL and Python forms of
them equal, the v3 -> v4 migration, and every query reading the shown attempt's points.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from storage import queries
from storage.bus import open_publisher
from storage.dashboard_reads import runs_table
from storage.export import export_points
from storage.progress import last_steps
from storage.queries_multi import trajectories_multi
from storage.recorder import Recorder
from storage.registry import MIGRATIONS, SCHEMA_VERSION, VIEW_COLUMNS, Registry, run_view, runs, runs_columns
from storage.settings import Settings


def _finish_all(reg: Registry, ids: list[str], attempt: int, status: str, steps: int, loss: float) -> None:
    for rid in ids:
        reg.mark_running(rid, attempt, "w")
        reg.finish(
            rid,
            attempt,
            status,
            steps_done=steps,
            summary={"final_train_loss": loss},
            diverged_step=steps - 1 if status == "diverged" else None,
        )


def test_a_cancelled_rerun_leaves_the_earlier_sweep_exactly_as_it_was(tmp_path: Path, make_configs) -> None:
    _cancelled_rerun(Registry(f"sqlite:///{tmp_path / 'r.sqlite'}"), make_configs())


def test_a_cancelled_rerun_on_postgresql(pg_registry: Registry, make_configs) -> None:
    _cancelled_rerun(pg_registry, make_configs())


def _cancelled_rerun(reg: Registry, configs: list) -> None:  # type: ignore[type-arg]
    ids = [c.run_id for c in configs]
    a = reg.create_sweep("a", "t", {})
    reg.add_runs(a, configs)
    _finish_all(reg, ids, 0, "done", 100, 0.5)
    before_sweep = reg.get_sweep(a)
    before_runs = reg.list_runs(a)
    # B: the same cells with --rerun (tasks.api.queue_cells: link, then reset for B)
    b = reg.create_sweep("b", "t", {})
    reg.add_runs(b, configs)
    assert reg.reset_for_rerun(ids, sweep_id=b) == dict.fromkeys(ids, 1)
    for rid in ids:
        reg.mark_running(rid, 1, "w")
    during = reg.get_sweep(a)
    assert during["status"] == "running" and during["newer"] == {"running": len(ids)}  # they train again
    cols = runs_columns(reg, sweep_id=a, fields=("shown_attempt", "shown_status", "shown_steps_done"))
    assert set(cols["shown_attempt"]) == {0} and set(cols["shown_status"]) == {"done"}  # data: the finished one
    reg.request_cancel(b)
    for rid in ids:
        reg.finish(rid, 1, "cancelled", steps_done=30, summary={"final_train_loss": 0.9})
    after_sweep, after_runs = reg.get_sweep(a), reg.list_runs(a)
    assert after_sweep["status"] == before_sweep["status"] == "done"
    assert after_sweep["counts"] == before_sweep["counts"] and after_sweep["newer"] == {"cancelled": len(ids)}
    keys = (
        "effective_status",
        "shown_attempt",
        "shown_status",
        "shown_steps_done",
        "shown_diverged_step",
        "shown_summary",
    )
    assert [{k: r[k] for k in keys} for r in after_runs] == [{k: r[k] for k in keys} for r in before_runs]
    assert all(r["shown_steps_done"] == 100 and r["shown_summary"] == {"final_train_loss": 0.5} for r in after_runs)
    # B launched the cancelled attempt: it reads cancelled (its --wait exits non-zero), with the result shown
    assert reg.get_sweep(b)["status"] == "cancelled" and reg.get_sweep(b)["counts"]["cancelled"] == len(ids)
    assert {r["effective_status"] for r in reg.list_runs(b)} == {"cancelled"}
    assert {r["shown_attempt"] for r in reg.list_runs(b)} == {0}
    # a run read on its own (no sweep) reads its effective status
    assert {r["effective_status"] for r in reg.get_runs(ids)} == {"done"}
    # the Runs page's table says it in one cell
    table = runs_table(reg, a)
    assert set(table["status"]) == {"done"} and set(table["shown_attempt"]) == {0}
    assert set(table["newer"]) == {"attempt 1 cancelled; showing attempt 0 (done)"}
    assert set(runs_table(reg, b)["status"]) == {"cancelled"}
    # a rerun of B that completes becomes the one shown, for every sweep
    assert reg.reset_for_rerun(ids, sweep_id=b) == dict.fromkeys(ids, 2)
    _finish_all(reg, ids, 2, "diverged", 40, float("nan"))
    for sid in (a, b):
        sweep = reg.get_sweep(sid)
        assert sweep["counts"]["diverged"] == len(ids) and sweep["newer"] == {} and sweep["status"] == "done"
        assert {(r["shown_attempt"], r["shown_status"], r["shown_steps_done"]) for r in reg.list_runs(sid)} == {
            (2, "diverged", 40)
        }


def test_sql_and_python_views_agree_on_every_state(tmp_path: Path, make_configs) -> None:
    reg = Registry(f"sqlite:///{tmp_path / 'r.sqlite'}")
    configs = make_configs(seeds=tuple(range(6)))
    sid = reg.create_sweep("s", "t", {})
    reg.add_runs(sid, configs)
    ids = [c.run_id for c in configs]
    # every (earlier result?, current status) pair
    states = list(
        itertools.product(
            (None, "done", "diverged"), ("queued", "running", "done", "diverged", "failed", "cancelled", "lost")
        )
    )
    assert len(states) <= len(ids)
    for rid, (result, current) in zip(ids, states, strict=False):
        if result is not None:
            _finish_all(reg, [rid], 0, result, 100, 0.25)
            reg.reset_for_rerun([rid], sweep_id=sid)
        att = reg.get_run(rid)["attempt"]
        if current != "queued":  # a lost run's heartbeat is from long ago: mark_lost below finds it
            reg.mark_running(rid, att, "w", now=1.0 if current == "lost" else None)
        if current in ("done", "diverged", "failed", "cancelled"):
            reg.finish(rid, att, current, steps_done=7, summary={"final_train_loss": 0.75})
    reg.mark_lost(1000.0)
    for rid, (_result, current) in zip(ids, states, strict=False):
        assert reg.get_run(rid)["status"] == current
    with reg.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(runs, *(v.label(k) for k, v in VIEW_COLUMNS.items())))]
    for row in rows:
        py = run_view(row)
        sql = {k: row[k] for k in VIEW_COLUMNS}
        sql["shown_summary"] = json.loads(sql["shown_summary"]) if sql["shown_summary"] else {}
        assert py == sql, row["run_id"]
        has_result = row["result_attempt"] is not None
        if has_result and row["status"] not in ("done", "diverged"):  # an earlier finished attempt is shown
            assert py["shown_attempt"] == row["result_attempt"] < row["attempt"] and py["newer_status"] == row["status"]
            expected = row["status"] if row["status"] in ("queued", "running") else row["result_status"]
            assert py["effective_status"] == expected
        else:
            assert py["shown_attempt"] == row["attempt"] and py["newer_status"] is None


def test_a_v3_registry_migrates_with_each_finished_run_as_its_own_result(tmp_path: Path, make_configs) -> None:
    path = tmp_path / "registry.sqlite"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:  # the released steps, as a v3 gamma-lab left the file
        conn.exec_driver_sql("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for step in MIGRATIONS[:3]:
            step(conn)
        conn.exec_driver_sql("INSERT INTO schema_version VALUES (3)")
    engine.dispose()
    configs = make_configs()
    statuses = ["done", "diverged", "cancelled", "failed", "running", "queued", "lost", "done"]
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO sweeps VALUES ('s1', 'old', 'carol', 1.0, '{}', 'done', 'local', 'cpu')")
        for i, (c, status) in enumerate(zip(configs, statuses, strict=True)):
            conn.execute(
                "INSERT INTO runs (run_id, gamma, eta, seed, config, shape_key, status, attempt, created, ended, "
                "steps_done, summary, cancel_requested, depth, width) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1.0, 2.0, "
                "?, ?, 0, 3, 8)",
                (
                    c.run_id,
                    c.gamma,
                    c.eta,
                    c.seed,
                    c.to_json(),
                    c.shape_key,
                    status,
                    i % 3,
                    10 * i,
                    json.dumps({"final_train_loss": i}),
                ),
            )
            conn.execute("INSERT INTO sweep_runs VALUES ('s1', ?, 1.0)", (c.run_id,))
    reg = Registry(f"sqlite:///{path}")
    assert reg.version == SCHEMA_VERSION >= 4
    got = {r["run_id"]: r for r in reg.list_runs("s1")}
    assert len(got) == len(configs)
    for i, (c, status) in enumerate(zip(configs, statuses, strict=True)):
        r = got[c.run_id]
        assert r["status"] == status and r["attempt"] == i % 3 and r["link_attempt"] == i % 3
        assert r["summary"] == {"final_train_loss": i} and r["steps_done"] == 10 * i
        if status in ("done", "diverged"):
            assert (r["result_attempt"], r["result_status"], r["result_steps_done"]) == (i % 3, status, 10 * i)
            assert r["result_summary"] == {"final_train_loss": i} and r["result_ended"] == 2.0
        else:
            assert r["result_attempt"] is None and r["newer_status"] is None
        assert r["effective_status"] == status and r["shown_attempt"] == i % 3  # reads as before
    assert reg.get_sweep("s1")["counts"]["done"] == 2  # the rollup is unchanged
    reg.close()
    assert Registry(f"sqlite:///{path}").version == SCHEMA_VERSION  # reopening is a no-op


def _points(pub, run_id: str, attempt: int, n: int, level: float) -> None:
    steps = np.arange(n)
    pub.started(run_id, attempt, "w")
    pub.points(run_id, attempt, steps, ["train_loss"] * n, level * np.ones(n))


def test_queries_and_export_read_the_finished_attempt_until_a_newer_one_finishes(
    settings: Settings, make_configs, tmp_path: Path
) -> None:
    configs = make_configs(gammas=(1.0,), etas=(0.1,), seeds=(0, 1))
    ids = [c.run_id for c in configs]
    reg = Registry(settings.registry_url)
    a = reg.create_sweep("a", "t", {})
    reg.add_runs(a, configs)
    pub = open_publisher(settings)
    for rid in ids:  # attempt 0: 50 steps at loss 2, done
        _points(pub, rid, 0, 50, 2.0)
        pub.finished(rid, 0, "done", steps_done=50, summary={"final_train_loss": 2.0})
    with Recorder(settings) as rec:
        rec.drain()

        def snapshot() -> dict:
            return {
                "heat": queries.heatmap(settings, a).drop(columns=["n_newer"]),
                "traj": queries.trajectories(settings, ids),
                "multi": trajectories_multi(settings, ids, ["train_loss"]),
                "bands": queries.seed_bands(settings, a, 1.0, 0.1),
                "overlay": queries.overlay(settings, ids, x="eta_t"),
                "export": export_points(settings, None, tmp_path / "a.parquet", sweep_id=a).rows,
            }

        before = snapshot()
        assert before["heat"]["value"].tolist() == [2.0] and before["export"] == 2 * 50
        b = reg.create_sweep("b", "t", {})
        reg.add_runs(b, configs)
        reg.reset_for_rerun(ids, sweep_id=b)
        for rid in ids:  # attempt 1: 12 steps at loss 9, still running
            _points(pub, rid, 1, 12, 9.0)
        rec.drain()
        during = queries.heatmap(settings, a)
        assert during["n_newer"].tolist() == [2] and during["cell_status"].tolist() == ["ok"]
        # the Runs page's progress: the running (newer) attempt's last step
        assert set(last_steps(settings, ids)["last_step"]) == {11}
        for rid in ids:
            pub.finished(rid, 1, "cancelled", steps_done=12, summary={"final_train_loss": 9.0})
        rec.drain()
        after = snapshot()
        for key in ("heat", "traj", "multi", "bands", "overlay"):
            pd.testing.assert_frame_equal(after[key], before[key], obj=key)
        assert after["export"] == before["export"]
        assert queries.heatmap(settings, a)["n_newer"].tolist() == [0]  # nothing is training again
        # the stored points of both attempts are all there
        assert rec.store.count_points() == 2 * 50 + 2 * 12
        # a rerun that finishes becomes the one shown
        reg.reset_for_rerun(ids, sweep_id=b)
        for rid in ids:
            _points(pub, rid, 2, 30, 0.5)
            pub.finished(rid, 2, "done", steps_done=30, summary={"final_train_loss": 0.5})
        rec.drain()
        for sid in (a, b):
            heat = queries.heatmap(settings, sid)
            assert heat["value"].tolist() == [0.5] and heat["n_newer"].tolist() == [0]
        traj = queries.trajectories(settings, ids)
        assert traj["step"].max() == 29 and set(traj["value"]) == {0.5}
        assert export_points(settings, None, tmp_path / "c.parquet", sweep_id=a).rows == 2 * 30
        assert rec.store.count_points() == 2 * 50 + 2 * 12 + 2 * 30


@pytest.mark.parametrize("status", ["failed", "lost"])
def test_a_failed_or_lost_rerun_does_not_hide_the_result_either(tmp_path: Path, make_configs, status: str) -> None:
    reg = Registry(f"sqlite:///{tmp_path / 'r.sqlite'}")
    configs = make_configs(seeds=(0,))
    ids = [c.run_id for c in configs]
    a = reg.create_sweep("a", "t", {})
    reg.add_runs(a, configs)
    _finish_all(reg, ids, 0, "done", 100, 0.5)
    b = reg.create_sweep("b", "t", {})
    reg.add_runs(b, configs)
    reg.reset_for_rerun(ids, sweep_id=b)
    for rid in ids:
        reg.mark_running(rid, 1, "w", now=1.0)
        if status == "failed":
            reg.finish(rid, 1, "failed", error="boom")
    if status == "lost":
        assert sorted(reg.mark_lost(5.0)) == sorted(ids)
    assert reg.get_sweep(a)["status"] == "done" and reg.get_sweep(a)["newer"] == {status: len(ids)}
    assert reg.get_sweep(b)["status"] == "failed"  # B's own attempt failed or was lost
    assert {r["shown_steps_done"] for r in reg.list_runs(a)} == {100}
