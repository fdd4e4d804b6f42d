"""Cancelling a rerun hides the finished results of an earlier sweep (issue 9, item 8), with real
processes: the `gamma-lab` CLI, its local worker, a standalone `gamma-lab recorder`.

`gamma-lab sweep s.toml --wait` (sweep A, done); `gamma-lab sweep s.toml --rerun` (sweep B: the same
runs, a new attempt), stopped mid-run by `gamma-lab cancel B`. A run belongs to both sweeps; before
the fix A then read `cancelled` with B's partial steps, its export held the partial curves and its
portrait was empty. Now A stays exactly as it was: `status` (status, steps, loss of every run),
`export` csv byte for byte, `export --series` rows, the heatmap and trajectories; `status` notes the
cancelled newer attempt; B reads `cancelled`. Every attempt's points stay stored (expected for the
finished ones, a partial curve for the cancelled one, no duplicate). A rerun that completes then
becomes the one shown, for both sweeps.

The worker is paused (SIGSTOP) between B's start and the cancel, so the cancel lands mid-run on any
machine; it then stops at its next flush.
"""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path

import pandas as pd
import pytest

from storage.registry import Registry
from tests.faults.conftest import base_env, cli, expected_points, small_spec, spawn, stop, store_counts, wait_for

pytestmark = pytest.mark.slow

STEPS = 5000  # ~1,500 steps pass between B's start and the pause on an idle machine: a wide margin
EVAL_POINTS = 3


def _ok(res, what: str) -> str:  # type: ignore[no-untyped-def]
    assert res.returncode == 0, f"{what}: exit {res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    assert "Traceback" not in res.stderr, f"{what}: {res.stderr[-3000:]}"
    return res.stdout


def _run_rows(status_out: str) -> dict[str, tuple[str, str, str]]:
    """run_id -> (status, steps, final_loss) from `gamma-lab status SWEEP`'s run table."""
    rows = {}
    for line in status_out.splitlines():
        parts = line.split()
        if len(parts) >= 7 and len(parts[0]) == 16 and parts[0] != "run_id":
            rows[parts[0]] = (parts[4], parts[5], parts[6])
    return rows


def _snapshot(env: dict[str, str], lab: Path, sweep: str, run_ids: list[str], *, series: bool = True) -> dict:
    """What a user sees of a sweep: `status`, `export` csv, `export --series` (when asked) and the
    dashboard's heatmap and trajectories (storage.queries, read here)."""
    from storage import queries
    from storage.settings import load_settings

    status = _ok(cli(env, "status", sweep), f"status {sweep}")
    out = {"status": status, "rows": _run_rows(status), "csv": _ok(cli(env, "export", sweep), f"export {sweep}")}
    if series:
        path = lab.parent / f"series-{sweep}.csv"
        _ok(cli(env, "export", sweep, "--series", "--out", str(path)), f"export --series {sweep}")
        out["series"] = pd.read_csv(path).sort_values(["run_id", "metric", "step"]).reset_index(drop=True)
    settings = load_settings(data_dir=str(lab))
    out["heatmap"] = queries.heatmap(settings, sweep).drop(columns=["n_newer"], errors="ignore")
    out["trajectories"] = queries.trajectories(settings, run_ids)
    return out


def _views(lab: Path, sweep: str) -> dict[str, tuple]:
    with Registry(f"sqlite:///{lab / 'registry.sqlite'}") as reg:
        return {
            # .get: the same test runs against a registry from before the fix (it must fail there, not crash)
            r["run_id"]: (r["status"], r["attempt"], r.get("shown_attempt"), r.get("effective_status"), r["steps_done"])
            for r in reg.list_runs(sweep)
        }


def test_cancelling_a_rerun_leaves_the_earlier_sweep_exactly_as_it_was(lab: Path) -> None:
    from storage.settings import load_settings
    from tasks.local_queue import live_workers

    env = base_env(lab, GAMMA_LAB_LOST_AFTER_S="60")  # the paused worker must not be marked lost meanwhile
    spec = lab.parent / "s.toml"
    spec.write_text(small_spec("rerun", steps=STEPS, eval_points=EVAL_POINTS))
    expected = expected_points(STEPS, EVAL_POINTS)

    # sweep A, to the end
    a = _ok(cli(env, "sweep", str(spec), "--wait"), "sweep A --wait").split()[-1]
    run_ids = sorted(_views(lab, a))
    assert len(run_ids) == 2 and {v[0] for v in _views(lab, a).values()} == {"done"}
    before = _snapshot(env, lab, a, run_ids)
    assert {r[0] for r in before["rows"].values()} == {"done"} and {r[1] for r in before["rows"].values()} == {
        str(STEPS)
    }
    assert len(before["series"]) == 2 * expected and len(before["csv"].splitlines()) == 3
    assert before["heatmap"]["cell_status"].tolist() == ["ok", "ok"]

    # sweep B: --rerun of the same spec, recorded live by a standalone recorder; cancelled mid-run
    recorder = spawn(env, ["recorder"], lab.parent / "recorder.log")
    try:
        b = _ok(cli(env, "sweep", str(spec), "--rerun"), "sweep B --rerun").split()[-1]
        assert b != a
        wait_for(lambda: {v[:2] for v in _views(lab, b).values()} == {("running", 1)}, 120, "B's runs to start")
        settings = load_settings(data_dir=str(lab))
        workers = live_workers(settings)
        assert workers, "no local worker alive while B runs"
        for pid in workers:  # hold it mid-run: the cancel lands before it can finish, on any machine
            os.kill(pid, signal.SIGSTOP)
        try:
            out = cli(env, "cancel", b)
            _ok(out, "cancel B")
            assert "cancel requested for 2 run(s)" in out.stderr
        finally:
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
        wait_for(lambda: {v[0] for v in _views(lab, b).values()} == {"cancelled"}, 120, "B's runs to be cancelled")
    finally:
        stop(recorder)
    assert "Traceback" not in (lab.parent / "recorder.log").read_text()

    # A exactly as it was; B cancelled; the note says so
    after = _snapshot(env, lab, a, run_ids)
    assert after["rows"] == before["rows"]
    assert after["csv"] == before["csv"]
    pd.testing.assert_frame_equal(after["series"], before["series"])
    pd.testing.assert_frame_equal(after["heatmap"], before["heatmap"])
    pd.testing.assert_frame_equal(after["trajectories"], before["trajectories"])
    assert f"sweep {a} " in after["status"] and ": done  done=2" in after["status"]
    assert "2 run(s) show their newest finished attempt; newer attempts: 2 cancelled" in after["status"]
    assert after["status"].count("attempt 1 cancelled; showing attempt 0 (done)") == 2
    views_a, views_b = _views(lab, a), _views(lab, b)
    assert {v[:4] for v in views_a.values()} == {("cancelled", 1, 0, "done")}
    assert {v[:4] for v in views_b.values()} == {("cancelled", 1, 0, "cancelled")}
    assert all(0 < v[4] < STEPS for v in views_b.values()), views_b  # stopped mid-run
    status_b = _ok(cli(env, "status", b), "status B")
    assert f"sweep {b} " in status_b and ": cancelled  cancelled=2" in status_b
    listing = _ok(cli(env, "status"), "status")
    lines = {line.split()[0]: line for line in listing.splitlines()[1:]}
    assert " done " in lines[a] and "(newer attempts: cancelled=2)" in lines[a]
    assert " cancelled " in lines[b]
    counts = store_counts(lab / "metrics.duckdb")
    assert counts.duplicates == 0
    for rid in run_ids:
        assert counts.per_run[(rid, 0)] == expected  # nothing deleted, nothing hidden
        assert 0 < counts.per_run.get((rid, 1), 0) < expected  # the cancelled attempt's partial curve, stored
    partial = sum(counts.per_run[(rid, 1)] for rid in run_ids)
    assert counts.points == 2 * expected + partial

    # a rerun that completes becomes the one shown, for A and B alike
    c = _ok(cli(env, "sweep", str(spec), "--rerun", "--wait"), "sweep C --rerun --wait").split()[-1]
    for sweep in (a, b, c):
        assert {v[:4] for v in _views(lab, sweep).values()} == {("done", 2, 2, "done")}
    final = _snapshot(env, lab, a, run_ids, series=False)
    assert "newer attempts" not in final["status"] and "showing attempt" not in final["status"]
    assert {r[:2] for r in final["rows"].values()} == {("done", str(STEPS))}
    assert pd.read_csv(io.StringIO(final["csv"]))["status"].tolist() == ["done", "done"]
    counts = store_counts(lab / "metrics.duckdb")
    assert counts.duplicates == 0 and counts.points == 4 * expected + partial
    for rid in run_ids:
        assert counts.per_run[(rid, 0)] == expected and counts.per_run[(rid, 2)] == expected
