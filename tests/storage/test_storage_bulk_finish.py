"""Finishing a big sweep is a few statements in one transaction, not a recount per run; attempt guard kept."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event

from storage.registry import FinishedEvent, HeartbeatEvent, NewRun, Registry, StartedEvent


class _Counter:
    """Counts transactions (BEGIN) and statements (an executemany counts once) on an engine."""

    def __init__(self, engine: sa.Engine):
        self.begins = 0
        self.statements = 0
        event.listen(engine, "begin", self._on_begin)
        event.listen(engine, "before_cursor_execute", self._on_execute)

    def _on_begin(self, _conn: object) -> None:
        self.begins += 1

    def _on_execute(self, _conn: object, _cur: object, statement: str, *_rest: object) -> None:
        if statement.strip().upper() not in ("BEGIN IMMEDIATE",):
            self.statements += 1

    def reset(self) -> None:
        self.begins = self.statements = 0


def _runs(n: int) -> list[NewRun]:
    return [NewRun(f"bulk{i:05d}", {"model": {"depth": 3, "width": 8}}, "s", 0.1, 0.01 * (1 + i), 0)
            for i in range(n)]


def test_finish_many_is_one_transaction(tmp_path: Path) -> None:
    n = 3000
    reg = Registry(f"sqlite:///{tmp_path / 'registry.sqlite'}")
    sid = reg.create_sweep("bulk", "t", {})
    sid2 = reg.create_sweep("other", "t", {})
    grid = _runs(n)
    reg.add_runs(sid, grid)
    reg.add_runs(sid2, grid[-10:])
    stale = [r.run_id for r in grid[:100]]
    counter = _Counter(reg.engine)

    applied = reg.mark_running_many([StartedEvent(r.run_id, 0, "w", 100.0) for r in grid])
    assert len(applied) == n and counter.begins == 1
    assert reg.get_sweep(sid)["status"] == "running"
    # a newer attempt is queued for 100 runs: their attempt-0 events must change nothing from now on
    assert set(reg.reset_for_rerun(stale).values()) == {1}
    counter.reset()

    beats = reg.heartbeat_many([HeartbeatEvent([r.run_id for r in grid], 0, "w", 150.0)])
    assert len(beats) == n - 100 and counter.begins == 1
    counter.reset()

    events = [FinishedEvent(r.run_id, 0, "diverged" if i % 10 == 0 else "done", steps_done=1000,
                            diverged_step=500 if i % 10 == 0 else None, summary={"final_train_loss": 0.1 * i},
                            time=200.0) for i, r in enumerate(grid)]
    done = reg.finish_many(events)
    assert counter.begins == 1, "finishing a whole sweep must be one transaction"
    # chunked reads (500 ids each) + one executemany + the rollup of the two sweeps: about 20, not thousands
    assert counter.statements <= 2 * (n // 500) + 6, counter.statements
    assert sorted(done) == sorted(r.run_id for r in grid[100:])

    by_id = {r["run_id"]: r for r in reg.get_runs([r.run_id for r in grid])}
    assert all(by_id[rid]["status"] == "queued" and by_id[rid]["attempt"] == 1 for rid in stale)
    assert by_id[grid[110].run_id]["status"] == "diverged" and by_id[grid[110].run_id]["diverged_step"] == 500
    assert by_id[grid[111].run_id]["status"] == "done" and by_id[grid[111].run_id]["ended"] == 200.0
    assert by_id[grid[111].run_id]["summary"] == {"final_train_loss": 0.1 * 111}
    counts = reg.get_sweep(sid)["counts"]
    assert counts["queued"] == 100 and counts["done"] + counts["diverged"] == n - 100
    # the stored rollup (not only the freshly computed one) was refreshed once for each touched sweep
    with reg.engine.connect() as conn:
        stored = dict(conn.execute(sa.text("SELECT id, status FROM sweeps")).all())
    assert stored == {sid: "running", sid2: "done"}

    # the stale runs' new attempt finishes in one more batch; later replays of old events are ignored
    counter.reset()
    assert sorted(reg.finish_many([FinishedEvent(rid, 1, "done", steps_done=1000) for rid in stale])) == sorted(stale)
    assert reg.finish_many([FinishedEvent(rid, 0, "failed", error="late") for rid in stale]) == []
    assert counter.begins == 2
    assert reg.get_sweep(sid)["status"] == "done"
    with reg.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT status FROM sweeps WHERE id = :i"), {"i": sid}).scalar() == "done"
    reg.close()


def test_single_run_methods_keep_their_answers(tmp_path: Path) -> None:
    reg = Registry(f"sqlite:///{tmp_path / 'registry.sqlite'}")
    sid = reg.create_sweep("one", "t", {})
    (run,) = _runs(1)
    reg.add_runs(sid, [run])
    assert not reg.finish(run.run_id, 3, "done")  # no such attempt
    assert reg.mark_running(run.run_id, 0, "w")
    assert reg.finish(run.run_id, 0, "failed", error="x" * 30_000)
    assert len(reg.get_run(run.run_id)["error"]) == 20_000
    assert not reg.mark_running(run.run_id, 0, "w")  # finished runs do not restart
    assert reg.heartbeat([run.run_id], 0, "w") == 0
    assert reg.get_sweep(sid)["status"] == "failed"
    reg.close()
