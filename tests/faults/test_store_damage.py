"""Damaged storage files: a real ~5 MB metrics.duckdb cut at several points or overwritten with junk,
and registry.sqlite cut or overwritten with junk.

Before: a store cut at 3/4 opened without a word; `sweep --wait` exited 0 with both runs `done`
while the recorder logged fatal checkpoint errors and wrote to the damaged file (3.74 -> 4.21 MB
plus a WAL); a cut at 99 % had its points events set aside as "cannot store points" (lost);
`status` and `export` crashed with tracebacks. Now: the damage is found at open (the header's
block count against the file size, the blocks in use, the small tables read in full, and every
point read when the file changed since a recorder last closed it), every command says one line
naming the file and what to do, the file is never written (same bytes and mtime), and the events
wait on the bus: once the file is moved aside, the waiting points are stored exactly once.
A registry cut or overwritten with junk is named in one line by every command, and kept as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.faults import conftest as faults
from tests.faults.conftest import base_env, cli, expected_points, registry_runs, small_spec, store_counts, wait_for

pytestmark = pytest.mark.slow

STEPS, EVAL = 200, 3
HEADER = 3 * 4096  # DuckDB's main header and its two database headers


def build_store(path: Path, target_bytes: int = 5_000_000) -> None:
    """A real store of about `target_bytes`, written as the recorder writes it: batches of points
    ingested through MetricStore, a checkpoint after each run. Then the first runs' points are dropped
    and a few more runs recorded, so that, as in a store that recorded for weeks, freed blocks early in
    the file are reused and what DuckDB reads at open does not sit at the end: the code before the fix
    opened this file cut at 50 %, 75 % or 99 % without a word (as the issue's store cut at 3/4)."""
    code = f"""
import os, numpy as np
from storage.metric_store import MetricStore, PointsBatch
s = MetricStore({str(path)!r}); rng = np.random.default_rng(0); r = 0; n = 1000
while os.path.getsize({str(path)!r}) < {target_bytes}:
    s.ingest([PointsBatch(f"padding-{{r}}", 0, k, np.arange(k * n, (k + 1) * n), ["train_loss"] * n, rng.random(n))
              for k in range(8)])
    s.checkpoint(); r += 1
s.conn.execute("DELETE FROM points WHERE run_key < 2"); s.checkpoint()
for k in range(3):
    s.ingest([PointsBatch(f"late-{{k}}", 0, 0, np.arange(100), ["train_loss"] * 100, rng.random(100))]); s.checkpoint()
s.close()
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def block_of(path: Path, table: str) -> int:
    """The file offset of the middle of a data block of `table` (read at every open)."""
    import duckdb

    conn = duckdb.connect(str(path), read_only=True)
    try:
        size = conn.execute("SELECT block_size FROM pragma_database_size()").fetchone()[0]
        ids = [b for (b,) in conn.execute(f"SELECT block_id FROM pragma_storage_info('{table}')").fetchall() if b >= 0]
    finally:
        conn.close()
    assert ids, f"{table} has no block of its own"
    mid = len(ids) // 2
    return HEADER + sorted(ids)[mid] * size + size // 2


def damage(path: Path, how: str) -> str:
    data = path.read_bytes()
    if how == "past_header":
        path.write_bytes(data[: HEADER + 100])
        return f"cut to {HEADER + 100} of {len(data)} bytes"
    if how.startswith("cut"):
        keep = len(data) * int(how[3:]) // 100
        path.write_bytes(data[:keep])
        return f"cut to {keep} of {len(data)} bytes"
    # junk over the middle of a block in use: of a small table (read at every open), or of the points
    at = block_of(path, "points" if how == "junk_points" else "ingested")
    junk = np.random.default_rng(1).integers(0, 256, 16384, dtype=np.uint8).tobytes()
    with open(path, "r+b") as fh:
        fh.seek(at)
        fh.write(junk)
    return f"16 KiB of junk at byte {at} of {len(data)}"


def fingerprint(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns


def spool_events(data: Path) -> list[dict]:
    return [json.loads(p.read_bytes()) for p in sorted((data / "spool").glob("*.evt"))]


def one_error_line(res: subprocess.CompletedProcess[str], path: Path) -> str:
    lines = [x for x in res.stderr.splitlines() if x.startswith(("error:", "warning:"))]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert len(lines) == 1, res.stderr[-3000:]
    assert str(path) in lines[0] and ("Move it aside" in lines[0] or "restore" in lines[0]), lines[0]
    return lines[0]


@pytest.mark.parametrize("how", ["cut10", "cut50", "cut75", "cut99", "past_header", "junk", "junk_points"])
def test_damaged_metric_store_is_named_never_written_and_nothing_is_lost(lab: Path, tmp_path: Path, how: str) -> None:
    env = base_env(lab)
    store = lab / "metrics.duckdb"
    build_store(store)
    assert store.stat().st_size >= 4_500_000
    spec = tmp_path / "dmg.toml"
    spec.write_text(small_spec("dmg", steps=STEPS, eval_points=EVAL))

    # a sweep queued while the store was fine; nobody records, so its events wait in the spool
    res = cli(env, "sweep", str(spec))
    assert res.returncode == 0, res.stderr
    sweep_id = res.stdout.strip().splitlines()[-1]
    wait_for(lambda: sum(e["type"] == "finished" for e in spool_events(lab)) == 2, 120, "both runs' finished events")
    waiting = spool_events(lab)
    n_points_events = sum(e["type"] == "points" for e in waiting)

    what = damage(store, how)
    before = fingerprint(store)

    res = cli(env, "sweep", str(spec), "--wait")
    assert res.returncode != 0, (what, res.stderr)
    line = one_error_line(res, store.resolve())
    assert line.startswith("error:")

    res = cli(env, "status")
    assert res.returncode == 0, res.stderr
    one_error_line(res, store.resolve())
    assert sweep_id in res.stdout  # the registry is still listed

    for args in (["export", sweep_id], ["export", sweep_id, "--series"]):
        res = cli(env, *args)
        assert res.returncode != 0, (args, res.stdout[-500:])
        assert one_error_line(res, store.resolve()).startswith("error:")

    assert fingerprint(store) == before, f"the damaged file ({what}) was written"
    assert not Path(str(store) + ".wal").exists()
    assert spool_events(lab) == waiting  # nothing acknowledged, nothing set aside
    assert not list((lab / "spool" / "rejected").glob("*.evt"))

    # moved aside: recording resumes and the waiting points are stored exactly once
    store.rename(lab / "metrics.duckdb.broken")
    res = cli(env, "status", sweep_id)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    runs = registry_runs(lab)
    assert sorted(r["status"] for r in runs) == ["done", "done"], [(r["status"], r["error"]) for r in runs]
    counts = store_counts(store)
    want = expected_points(STEPS, EVAL)
    assert {k: v for k, v in counts.per_run.items()} == {(r["run_id"], 0): want for r in runs}
    assert counts.duplicates == 0 and counts.points == 2 * want
    assert not spool_events(lab)
    print(
        f"{how}: {what}; {len(waiting)} events ({n_points_events} points events) waited; "
        f"stored {counts.points} points of {2 * want} expected, duplicates {counts.duplicates}"
    )


@pytest.mark.parametrize("how", ["cut50", "cut90", "junk"])
def test_damaged_registry_is_named_by_every_command_and_kept(lab: Path, tmp_path: Path, how: str) -> None:
    env = base_env(lab)
    spec = tmp_path / "reg.toml"
    spec.write_text(small_spec("reg", steps=STEPS, eval_points=EVAL))
    res = cli(env, "sweep", str(spec), "--wait")
    assert res.returncode == 0, res.stderr
    sweep_id = res.stdout.strip().splitlines()[-1]
    for i in range(3):  # more runs, so the file has pages of every table to damage
        spec_i = tmp_path / f"reg{i}.toml"
        spec_i.write_text(
            small_spec(f"reg-{i}", steps=20, eval_points=EVAL, seeds=tuple(range(10 * i + 1, 10 * i + 11)))
        )
        assert cli(env, "sweep", str(spec_i)).returncode == 0
    res = cli(env, "status")  # records what the workers did, then leaves the registry checkpointed
    assert res.returncode == 0, res.stderr
    wait_for(
        lambda: not (lab / "registry.sqlite-wal").exists() or os.path.getsize(lab / "registry.sqlite-wal") == 0,
        30,
        "the registry's WAL folded in",
    )
    registry = lab / "registry.sqlite"
    data = registry.read_bytes()
    if how.startswith("cut"):
        registry.write_bytes(data[: len(data) * int(how[3:]) // 100])
    else:
        mid = len(data) // 2 // 4096 * 4096
        junk = np.random.default_rng(2).integers(0, 256, 8192, dtype=np.uint8).tobytes()
        registry.write_bytes(data[:mid] + junk + data[mid + 8192 :])
    before = fingerprint(registry)
    store_before = fingerprint(lab / "metrics.duckdb")

    commands = [
        ["status"],
        ["status", sweep_id],
        ["export", sweep_id],
        ["export", sweep_id, "--series"],
        ["sweep", str(spec)],
        ["rerun", sweep_id],
        ["cancel", sweep_id],
    ]
    for args in commands:
        res = cli(env, *args)
        assert res.returncode != 0, (args, res.stdout[-500:], res.stderr[-1500:])
        line = one_error_line(res, registry.resolve())
        assert "registry" in line, line
    assert fingerprint(registry) == before  # nothing reset, nothing written
    assert fingerprint(lab / "metrics.duckdb") == store_before


def test_damage_found_while_recording_pauses_the_recorder_until_the_file_is_moved_aside(
    lab: Path, tmp_path: Path
) -> None:
    """A points block damaged under a running `gamma-lab recorder` (its open had nothing to find):
    the first export that reads it says so in one line, the recorder never writes that file again and
    leaves later events on the bus, and records them once when the file is moved aside."""
    env = base_env(lab)
    store = lab / "metrics.duckdb"
    spec_a, spec_b = tmp_path / "a.toml", tmp_path / "b.toml"
    spec_a.write_text(small_spec("a", steps=2000, eval_points=EVAL))
    spec_b.write_text(small_spec("b", steps=STEPS, eval_points=EVAL, seeds=(1,)))
    res = cli(env, "sweep", str(spec_a), "--wait")
    assert res.returncode == 0, res.stderr
    sweep_a = res.stdout.strip().splitlines()[-1]
    at = block_of(store, "points")
    recorder = faults.spawn(env, ["recorder"], tmp_path / "recorder.log")
    try:
        log = tmp_path / "recorder.log"
        wait_for(lambda: "Ctrl-C to stop" in log.read_text(), 60, "the recorder to open the store")
        with open(store, "r+b") as fh:  # junk over a points block of sweep a, under the running recorder
            fh.seek(at)
            fh.write(np.random.default_rng(3).integers(0, 256, 16384, dtype=np.uint8).tobytes())
        res = cli(env, "export", sweep_a, "--series")
        assert res.returncode != 0, res.stdout[-500:]
        one_error_line(res, store.resolve())
        damaged = fingerprint(store)

        res = cli(env, "sweep", str(spec_b))  # the recorder elsewhere holds the file: queued
        assert res.returncode == 0, res.stderr
        sweep_b = res.stdout.strip().splitlines()[-1]
        wait_for(lambda: sum(e["type"] == "finished" for e in spool_events(lab)) == 2, 120, "b's finished events")
        time.sleep(2)  # the paused recorder had time to (not) take them
        assert sum(e["type"] == "finished" for e in spool_events(lab)) == 2
        assert fingerprint(store) == damaged, "the damaged file was written after the damage was found"

        store.rename(lab / "metrics.duckdb.broken")
        wait_for(lambda: not spool_events(lab), 60, "the recorder to record the waiting events")
    finally:
        faults.stop(recorder)
    text = (tmp_path / "recorder.log").read_text()
    assert "Traceback" not in text, text[-3000:]
    runs_b = [r for r in registry_runs(lab) if r["seed"] == 1]
    assert [r["status"] for r in runs_b] == ["done", "done"]
    counts = store_counts(store)
    want = expected_points(STEPS, EVAL)
    assert counts.per_run == {(r["run_id"], 0): want for r in runs_b} and counts.duplicates == 0
    print(f"found while recording; sweep {sweep_b}: stored {counts.points} of {2 * want}, duplicates 0")
