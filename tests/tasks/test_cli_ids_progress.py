"""Issue 10 items 9 and 14 through the real `gamma-lab` command line (subprocesses, real files).

9: `sweep --wait` (and `rerun --wait`, which share the wait loop) advance their bar by steps trained, so a
   sweep that is one work unit moves before any of its runs ends (it sat at 0/2 runs until the end).
14: every command that takes a sweep or run id takes a unique prefix of it, as git does, and says which
   ids an ambiguous one starts (exit 2); `export --series` rows carry gamma, eta and seed.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pandas as pd
import pytest

from storage.registry import Registry
from tests.faults.conftest import base_env, cli, expected_points, registry_runs, small_spec, store_counts
from tests.faults.conftest import lab as lab  # the fixture: a data folder, its local workers killed at the end

pytestmark = pytest.mark.slow

# tqdm's line: "<sweep>:  12%|█▏  | 710/6000 [00:03<00:24, 215.85step/s, running=2]"
BAR = re.compile(r"(\d+)/(\d+) \[[^\]]*?(?:step/s|s/step)(?:, ([^\]]*))?\]")


def _bar_states(stderr: str) -> list[tuple[int, int, str]]:
    """(position, total, postfix) of every bar refresh tqdm wrote (it separates them with \\r)."""
    return [
        (int(m.group(1)), int(m.group(2)), m.group(3) or "")
        for part in re.split(r"[\r\n]", stderr)
        if (m := BAR.search(part))
    ]


def _sweep_id(res) -> str:  # noqa: ANN001 - a CompletedProcess
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.strip().splitlines()[-1]


def _check_store(lab: Path, runs: int, steps: int, eval_points: int, attempts: int = 1) -> None:
    stored = store_counts(lab / "metrics.duckdb")
    want = runs * attempts * expected_points(steps, eval_points)
    assert (stored.points, stored.duplicates) == (want, 0), (stored.points, want)


def _mid_run(states: list[tuple[int, int, str]], total: int) -> list[tuple[int, int, str]]:
    """Refreshes that show steps trained while no run has ended yet."""
    return [s for s in states if 0 < s[0] < total and s[1] == total and "running=" in s[2] and "done=" not in s[2]]


def test_wait_bars_advance_by_steps_before_any_run_ends(lab: Path) -> None:
    steps, eval_points = 3000, 3
    spec = lab.parent / "one-unit.toml"
    # two cells of one shape: one ensemble, one work unit, both runs end together at the very end
    spec.write_text(small_spec("one-unit", etas=(0.01, 0.02), steps=steps, eval_points=eval_points))
    env = base_env(lab)

    res = cli(env, "sweep", str(spec), "--wait")
    sweep_id = _sweep_id(res)
    states = _bar_states(res.stderr)
    total = 2 * steps
    assert states and {s[1] for s in states} == {total}, states[:5]  # runs × steps, from the first refresh
    assert _mid_run(states, total), [s for s in states if s[0]][:10]  # moved while both runs trained
    assert [s[0] for s in states] == sorted(s[0] for s in states)  # never backwards
    assert states[-1][0] == total and "done=2" in states[-1][2]
    assert {r["status"] for r in registry_runs(lab)} == {"done"}
    _check_store(lab, 2, steps, eval_points)

    # rerun --wait shares the loop (by a prefix of the sweep id: item 14)
    again = cli(env, "rerun", sweep_id[:6], "--all", "--wait")
    assert again.returncode == 0, again.stderr[-3000:]
    states = _bar_states(again.stderr)
    assert _mid_run(states, total), [s for s in states if s[0]][:10]
    assert states[-1][0] == total and "done=2" in states[-1][2]
    runs = registry_runs(lab)
    assert {(r["status"], r["attempt"]) for r in runs} == {("done", 1)}
    _check_store(lab, 2, steps, eval_points, attempts=2)


def test_ids_by_unique_prefix_ambiguous_and_unknown_ones_are_refused(lab: Path) -> None:
    steps, eval_points = 40, 3
    spec = lab.parent / "tiny.toml"
    spec.write_text(small_spec("tiny", gammas=(0.5, 1.0), etas=(0.01,), steps=steps, eval_points=eval_points))
    env = base_env(lab)
    sweep_id = _sweep_id(cli(env, "sweep", str(spec), "--wait"))
    full = cli(env, "export", sweep_id)
    runs = pd.read_csv(io.StringIO(full.stdout))
    run_id = runs.run_id[0]

    # a unique prefix names the sweep or the run, for every command that takes one
    status = cli(env, "status", sweep_id[:5])
    assert status.returncode == 0 and status.stdout.startswith(f"sweep {sweep_id} "), status.stderr
    status = cli(env, "status", run_id[:6])
    assert status.returncode == 0 and f"run_id: {run_id}" in status.stdout, status.stderr
    cancel = cli(env, "cancel", sweep_id[:5])
    assert cancel.returncode == 0 and f"of {sweep_id}" in cancel.stderr, cancel.stderr
    rerun = cli(env, "rerun", sweep_id[:5])
    assert rerun.returncode == 0 and "nothing to rerun: 2 done" in rerun.stderr, rerun.stderr
    rerun = cli(env, "rerun", run_id[:7].upper(), "--wait")  # a run, trained again; case does not matter
    assert rerun.returncode == 0 and "1 run(s) queued again" in rerun.stderr, rerun.stderr
    attempts = {(r["run_id"], r["status"], r["attempt"]) for r in registry_runs(lab)}
    assert attempts == {(r, "done", int(r == run_id)) for r in runs.run_id}
    _check_store(lab, 3, steps, eval_points)  # two first attempts, one second
    by_prefix = cli(env, "export", sweep_id[:4])
    assert (
        by_prefix.returncode == 0 and pd.read_csv(io.StringIO(by_prefix.stdout)).run_id.tolist() == runs.run_id.tolist()
    )

    # --series: gamma, eta and seed beside run_id, as in the runs export
    out = lab.parent / "series.csv"
    assert cli(env, "export", sweep_id[:4], "--series", "--out", str(out)).returncode == 0
    series = pd.read_csv(out)
    assert list(series.columns) == ["run_id", "gamma", "eta", "seed", "step", "metric", "value"]
    cells = runs.set_index("run_id")[["gamma", "eta", "seed"]]
    joined = series.merge(cells, left_on="run_id", right_index=True, suffixes=("", "_run"))
    for k in ("gamma", "eta", "seed"):
        assert (joined[k] == joined[f"{k}_run"]).all(), k
    assert len(series) == 2 * expected_points(steps, eval_points)
    assert not series.duplicated(["run_id", "step", "metric"]).any()

    # ids that a prefix no longer tells apart: a sweep whose id extends this sweep's, one that starts like a run
    with Registry(f"sqlite:///{lab / 'registry.sqlite'}") as reg:
        reg.create_sweep("twin", "someone", {}, sweep_id=sweep_id + "0")
        reg.create_sweep("lookalike", "someone", {}, sweep_id=run_id[:8] + "zzzz")
    for args in (("status", sweep_id[:6]), ("cancel", sweep_id[:6]), ("rerun", sweep_id[:6]), ("export", sweep_id[:6])):
        res = cli(env, *args)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        line = res.stderr.strip()
        assert line == (
            f"error: {args[0]}: '{sweep_id[:6]}' is ambiguous: it starts sweep {sweep_id}, sweep {sweep_id}0; "
            "give more characters"
        ), line
    res = cli(env, "status", run_id[:6])
    assert res.returncode == 2 and f"sweep {run_id[:8]}zzzz, run {run_id}" in res.stderr, res.stderr
    status = cli(env, "status", sweep_id)  # a full id wins over the longer id it starts
    assert status.returncode == 0 and status.stdout.startswith(f"sweep {sweep_id} "), status.stderr

    for text, why, command in (
        ("zzzzz", "nor the start of one", "status"),
        (sweep_id[:3], "a prefix needs at least 4 characters", "cancel"),
    ):
        res = cli(env, command, text)
        assert res.returncode == 2 and f"error: {command}: '{text}' is neither a sweep nor a run" in res.stderr
        assert why in res.stderr, res.stderr
    res = cli(env, "export", "zzzzz")
    assert res.returncode == 2 and "error: export: no sweep 'zzzzz', nor one starting with it" in res.stderr

    # nothing was touched by the refused commands
    assert {(r["run_id"], r["status"], r["attempt"]) for r in registry_runs(lab)} == attempts
    _check_store(lab, 3, steps, eval_points)
