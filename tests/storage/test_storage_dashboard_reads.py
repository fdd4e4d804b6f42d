"""storage.dashboard_reads: the sweep fingerprint changes with every transition the runs table shows,
and runs_table matches Registry.list_runs without parsing configs."""

from __future__ import annotations

import math
from pathlib import Path

from storage.dashboard_reads import RUN_TABLE_COLUMNS, runs_table, sweep_fingerprint
from storage.registry import Registry


def test_fingerprint_follows_every_transition(tmp_path: Path, make_configs) -> None:
    reg = Registry(f"sqlite:///{tmp_path / 'r.sqlite'}")
    sid = reg.create_sweep("s", "me", {})
    assert sweep_fingerprint(reg, sid) == ()
    ids = reg.add_runs(sid, make_configs()).new  # 8 runs
    seen = [sweep_fingerprint(reg, sid)]
    assert seen[0] == (("queued", 8, 0, None, None, 0),)
    assert sweep_fingerprint(reg, sid) == seen[0]  # stable while nothing changes

    def changed() -> None:
        fp = sweep_fingerprint(reg, sid)
        assert fp not in seen
        seen.append(fp)

    assert reg.mark_running(ids[0], 0, "w1", now=10.0)
    changed()
    assert reg.finish(ids[0], 0, "done", steps_done=5, summary={"final_train_loss": 0.25}, )
    changed()
    assert reg.mark_running(ids[1], 0, "w1", now=11.0)
    assert reg.finish(ids[1], 0, "diverged", steps_done=3, diverged_step=3)
    changed()
    reg.reset_for_rerun([ids[1]])  # diverged -> queued, attempt 1
    changed()
    assert reg.request_cancel(sid) > 0
    changed()
    other = reg.create_sweep("t", "me", {})
    reg.add_runs(other, make_configs(gammas=(5.0,)))
    assert sweep_fingerprint(reg, sid) == seen[-1]  # another sweep's runs do not touch this one
    reg.close()


def test_runs_table_matches_list_runs(tmp_path: Path, make_configs) -> None:
    reg = Registry(f"sqlite:///{tmp_path / 'r.sqlite'}")
    sid = reg.create_sweep("s", "me", {})
    ids = reg.add_runs(sid, make_configs(depth=4)).new
    reg.mark_running(ids[2], 0, "w7")
    reg.finish(ids[2], 0, "done", steps_done=50, summary={"final_train_loss": 0.5, "final_test_acc": 0.75})
    frame = runs_table(reg, sid)
    assert tuple(frame.columns) == RUN_TABLE_COLUMNS
    full = reg.list_runs(sid)
    assert frame["run_id"].tolist() == [r["run_id"] for r in full]  # same (γ, η, seed) order
    row = frame.set_index("run_id").loc[ids[2]]
    assert row["status"] == "done" and row["worker"] == "w7" and row["steps_done"] == 50
    assert row["final_train_loss"] == 0.5 and row["final_test_acc"] == 0.75
    assert math.isnan(row["best_train_loss"])
    assert set(frame["depth"]) == {4} and set(frame["width"]) == {8}
    assert frame["gamma"].dtype == "float64" and frame["eta"].dtype == "float64"
    assert runs_table(reg, "nope").empty
    reg.close()
