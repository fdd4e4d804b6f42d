"""A read-only data folder (issue 9, item 4): every command, `status` included, exited 1 with a
traceback (the recorder's lock file, the registry's migration and WAL files, the spool folder).

Reading works there: `status`, `status SWEEP`, `export` (csv, --series) and every dashboard page show
what the folder holds, exactly what they show on the writable original. Writing is refused in one line
naming the folder: `sweep`, `cancel`, `rerun`, `demo`, `recorder`, `worker` exit 2; the Launch button
and the Runs page's actions are disabled with the reason. Nothing in the folder changes.

The folder is made truly read-only: a copy on a tmpfs remounted `ro` (root ignores permission bits, so
`chmod a-w` alone proves nothing for root), and, for permission bits, a `chmod a-w` copy read by
processes that run without CAP_DAC_OVERRIDE (as an ordinary user would). Both a cleanly closed folder
and one left by a killed recorder (SQLite -wal/-shm, DuckDB .wal, with and without the -shm) are read.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from tests.faults.conftest import (
    base_env,
    cli,
    expected_points,
    kill_local_workers,
    registry_runs,
    small_spec,
    spawn,
    stop,
    store_counts,
    wait_for,
)

pytestmark = pytest.mark.slow

STEPS, EVAL_POINTS = 200, 3
SPEC = small_spec("ro", steps=STEPS, eval_points=EVAL_POINTS)  # 2 runs
MAIN = str(Path(__file__).resolve().parents[2] / "app" / "main.py")
REFUSED = ("sweep", "cancel", "rerun", "demo", "recorder", "worker")


def _no_workers(data: Path) -> bool:
    folder = data / "queue" / "workers"
    return not folder.is_dir() or not any(folder.iterdir())


@pytest.fixture(scope="module")
def lab_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A data folder with one finished real sweep (2 runs of 200 steps), every process gone."""
    root = tmp_path_factory.mktemp("ro-lab")
    data = root / "data"
    spec = root / "spec.toml"
    spec.write_text(SPEC)
    done = cli(base_env(data), "sweep", str(spec), "--wait")
    assert done.returncode == 0, done.stderr[-2000:]
    sweep_id = done.stdout.split()[-1]
    wait_for(lambda: _no_workers(data), 30, "the local workers to exit")
    kill_local_workers(data)
    return data, sweep_id


def checksums(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def read_only_copy(
    src: Path, small_tmpfs: Callable[[str], Path], prepare: Callable[[Path], None] | None = None
) -> Path:
    """`src` copied onto a fresh tmpfs, then remounted read-only (skipped where that is not allowed)."""
    mount = small_tmpfs("64m")
    data = mount / "data"
    shutil.copytree(src, data, symlinks=True)
    if prepare is not None:
        prepare(data)
    res = subprocess.run(["mount", "-o", "remount,ro", str(mount)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot remount a tmpfs read-only here ({res.stderr.strip() or res.returncode}); needs root")
    assert not os.access(data, os.W_OK)
    return data


def assert_refused(res: subprocess.CompletedProcess[str], data: Path, command: str) -> None:
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2, (command, res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr, (command, res.stderr[-2000:])
    assert len(lines) == 1, (command, lines)
    assert str(data) in lines[0] and "read-only" in lines[0], (command, lines[0])


def read_commands(env: dict[str, str], sweep_id: str, out: Path) -> dict[str, str]:
    """stdout of status, status SWEEP and export (csv), and the --series export written to `out`."""
    outputs = {}
    for name, args in {
        "status": ("status",),
        "status sweep": ("status", sweep_id),
        "export": ("export", sweep_id),
        "export --series": ("export", sweep_id, "--series", "--out", str(out)),
    }.items():
        res = cli(env, *args)
        assert res.returncode == 0, (name, res.stderr[-2000:])
        assert "Traceback" not in res.stderr, (name, res.stderr[-2000:])
        outputs[name] = res.stdout
    return outputs


def test_reading_commands_show_what_the_writable_original_shows(lab_folder, small_tmpfs, tmp_path):
    src, sweep_id = lab_folder
    data = read_only_copy(src, small_tmpfs)
    before = checksums(data)
    assert "registry.sqlite-wal" not in before and "metrics.duckdb.wal" not in before  # cleanly closed

    got = read_commands(base_env(data), sweep_id, tmp_path / "ro-series.csv")
    want = read_commands(base_env(src), sweep_id, tmp_path / "rw-series.csv")
    assert got["status"] == want["status"] and sweep_id in got["status"]
    assert got["status sweep"] == want["status sweep"]
    assert got["export"] == want["export"]
    runs = pd.read_csv(io.StringIO(got["export"]))
    assert len(runs) == 2 and set(runs["status"]) == {"done"} and set(runs["steps_done"]) == {STEPS}

    series = pd.read_csv(tmp_path / "ro-series.csv")
    pd.testing.assert_frame_equal(series, pd.read_csv(tmp_path / "rw-series.csv"))
    expected = 2 * expected_points(STEPS, EVAL_POINTS)
    assert len(series) == expected  # every point of both runs
    assert not series.duplicated(["run_id", "step", "metric"]).any()
    stored = store_counts(data / "metrics.duckdb")  # read-only open, in place
    assert (stored.points, stored.duplicates) == (expected, 0)
    assert sorted(r["status"] for r in registry_runs(data)) == ["done", "done"]  # Registry opens it read-only
    assert checksums(data) == before  # nothing written (a tmpfs remounted ro: nothing could be)


def test_writing_commands_say_the_folder_is_read_only(lab_folder, small_tmpfs, tmp_path):
    src, sweep_id = lab_folder
    data = read_only_copy(src, small_tmpfs)
    before = checksums(data)
    spec = tmp_path / "more.toml"
    spec.write_text(small_spec("more", gammas=(0.5,)))
    env = base_env(data)
    for command in REFUSED:
        args = {
            "sweep": ("sweep", str(spec), "--wait"),
            "cancel": ("cancel", sweep_id),
            "rerun": ("rerun", sweep_id),
            "demo": ("demo", "--steps", "10"),
            "recorder": ("recorder",),
            "worker": ("worker",),
        }[command]
        assert_refused(cli(env, *args, timeout=60), data, command)
    assert checksums(data) == before
    stored = store_counts(data / "metrics.duckdb")
    assert (stored.points, stored.duplicates) == (2 * expected_points(STEPS, EVAL_POINTS), 0)
    assert sorted(r["status"] for r in registry_runs(data)) == ["done", "done"]


@pytest.fixture(scope="module")
def killed_lab(lab_folder, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A copy of the lab whose standalone recorder and workers were killed -9 in the middle of a second
    sweep: runs left `running`, the registry with its -wal and -shm, the metric file with its .wal."""
    src, _ = lab_folder
    data = tmp_path_factory.mktemp("ro-killed") / "data"
    shutil.copytree(src, data)
    spec = data.parent / "long.toml"
    spec.write_text(small_spec("long", gammas=(0.5,), steps=200_000, eval_points=2))
    env = base_env(data)
    recorder = spawn(env, ["recorder"], data.parent / "recorder.log")
    try:
        launched = cli(env, "sweep", str(spec))
        assert launched.returncode == 0, launched.stderr[-2000:]
        sweep_id = launched.stdout.split()[-1]
        wal = data / "metrics.duckdb.wal"
        wait_for(lambda: wal.is_file() and wal.stat().st_size > 0, 60, "points recorded (a DuckDB .wal)")
    finally:
        kill_local_workers(data)
        if recorder.poll() is None:
            os.killpg(recorder.pid, signal.SIGKILL)
        stop(recorder)
    for name in ("registry.sqlite-wal", "registry.sqlite-shm", "metrics.duckdb.wal"):
        assert (data / name).is_file(), name
    return data, sweep_id


@pytest.mark.parametrize("shm", ["with -shm", "without -shm"])
def test_a_folder_left_by_a_killed_recorder_reads_with_its_wal_files(killed_lab, small_tmpfs, tmp_path, shm):
    src, sweep_id = killed_lab
    # what the files hold, read from a writable copy (SQLite and DuckDB replay their WALs there)
    scratch = tmp_path / "scratch"
    shutil.copytree(src, scratch)
    want_runs = {r["run_id"]: r for r in registry_runs(scratch)}
    want_points = store_counts(scratch / "metrics.duckdb")
    assert want_points.duplicates == 0

    def drop_shm(data: Path) -> None:
        if shm == "without -shm":
            (data / "registry.sqlite-shm").unlink()

    data = read_only_copy(src, small_tmpfs, drop_shm)
    before = checksums(data)
    env = base_env(data)
    status = cli(env, "status", sweep_id)
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr[-2000:]
    export = cli(env, "export", sweep_id)
    assert export.returncode == 0, export.stderr[-2000:]
    runs = pd.read_csv(io.StringIO(export.stdout))
    assert len(runs) == 2 and all(want_runs[r]["attempt"] == 0 for r in runs["run_id"])
    for row in runs.itertuples():
        assert row.status == want_runs[row.run_id]["status"] == "running"  # as stored when it was killed
        assert row.run_id in status.stdout
    out = tmp_path / "series.csv"
    series = cli(env, "export", sweep_id, "--series", "--out", str(out))
    assert series.returncode == 0, series.stderr[-2000:]
    points = pd.read_csv(out)
    ids = set(runs["run_id"])
    expected = sum(n for (run, attempt), n in want_points.per_run.items() if run in ids and attempt == 0)
    assert expected > 0 and len(points) == expected  # the points the .wal holds included
    assert not points.duplicated(["run_id", "step", "metric"]).any()
    stored = store_counts(data / "metrics.duckdb")
    assert (stored.points, stored.duplicates) == (want_points.points, 0)
    assert {r["run_id"]: r["status"] for r in registry_runs(data)} == {k: v["status"] for k, v in want_runs.items()}
    assert_refused(cli(env, "rerun", sweep_id), data, "rerun")
    assert checksums(data) == before


def test_an_older_registry_on_a_read_only_folder_says_to_open_it_writable_once(lab_folder, small_tmpfs):
    import sqlite3

    from storage.registry import SCHEMA_VERSION

    src, _ = lab_folder

    def older(data: Path) -> None:  # as a registry written by the previous release reads
        with sqlite3.connect(data / "registry.sqlite") as conn:
            conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION - 1,))
        conn.close()

    data = read_only_copy(src, small_tmpfs, older)
    res = cli(base_env(data), "status")
    lines = [line for line in res.stderr.splitlines() if line.strip() and not line.startswith("note:")]
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert len(lines) == 1 and "open it writable once to upgrade" in lines[0]
    assert str(data / "registry.sqlite") in lines[0]


def _without_dac_override() -> list[str]:
    """A command prefix that runs a process as root without CAP_DAC_OVERRIDE/DAC_READ_SEARCH: permission
    bits then apply to it as to any user (root itself ignores them)."""
    exe = shutil.which("setpriv")
    if exe is None:
        pytest.skip("setpriv (util-linux) not installed: cannot drop CAP_DAC_OVERRIDE")
    prefix = [exe, "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search", "--"]
    probe = subprocess.run([*prefix, sys.executable, "-c", "print(1)"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot drop capabilities here: {probe.stderr.strip()}")
    return prefix


def test_permission_bits_read_only_for_this_user(lab_folder, tmp_path):
    """Not a read-only mount: a folder this user may not write (chmod a-w), read by a process that obeys
    permission bits. Detected with os.access, not by assuming who runs it."""
    prefix = _without_dac_override()
    src, sweep_id = lab_folder
    data = tmp_path / "data"
    shutil.copytree(src, data)
    paths = [data, *data.rglob("*")]
    for p in paths:
        p.chmod(p.stat().st_mode & ~0o222)
    try:
        before = checksums(data)
        env = base_env(data)

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*prefix, sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True, timeout=120
            )

        status = run("status", sweep_id)
        assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr[-2000:]
        assert status.stdout == cli(base_env(src), "status", sweep_id).stdout  # as on the writable original
        lines = status.stdout.splitlines()
        rows = lines[next(i for i, line in enumerate(lines) if line.startswith("run_id")) + 1:]  # after the header
        assert [line.split()[4] for line in rows] == ["done", "done"]
        out = tmp_path / "series.csv"
        series = run("export", sweep_id, "--series", "--out", str(out))
        assert series.returncode == 0, series.stderr[-2000:]
        points = pd.read_csv(out)
        assert len(points) == 2 * expected_points(STEPS, EVAL_POINTS)
        assert not points.duplicated(["run_id", "step", "metric"]).any()
        for command in ("sweep", "cancel", "rerun"):
            args = {
                "sweep": ("sweep", str(tmp_path / "x.toml")),
                "cancel": ("cancel", sweep_id),
                "rerun": ("rerun", sweep_id),
            }[command]
            res = run(*args)
            assert_refused(res, data, command)
            assert "no write permission" in res.stderr
        assert checksums(data) == before
    finally:
        for p in paths:
            p.chmod(p.stat().st_mode | 0o200)


def test_dashboard_pages_read_a_read_only_folder(lab_folder, small_tmpfs, monkeypatch):
    from streamlit.testing.v1 import AppTest

    src, sweep_id = lab_folder
    data = read_only_copy(src, small_tmpfs)
    before = checksums(data)
    for key in [k for k in os.environ if k.startswith("GAMMA_LAB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("GAMMA_LAB_DATA", str(data))
    at = AppTest.from_file(MAIN, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    notice = " ".join(w.value for w in at.warning)
    assert "Read-only data folder" in notice and str(data) in notice
    launch = [b for b in at.get("form_submit_button") if b.proto.label == "Launch"]
    assert len(launch) == 1 and launch[0].proto.disabled
    assert "read-only" in " ".join(c.value for c in at.sidebar.caption)

    at.switch_page("views/runs.py").run()
    assert not at.exception, at.exception
    buttons = {b.label: b.disabled for b in at.button}
    assert buttons["Cancel sweep"] and buttons["Rerun unfinished"] and buttons["Add seeds"]
    assert "Read-only data folder" in " ".join(w.value for w in at.warning)
    for page in ("portrait", "trajectories", "overlays", "diagnostics", "compare"):
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception, (page, at.exception)
        assert not at.error, (page, [e.value for e in at.error])
        charts = at.get("plotly_chart")
        assert charts and any('"data":[{' in c.proto.spec for c in charts), page
    assert sweep_id in " ".join(str(s.value) for s in at.selectbox)
    stored = store_counts(data / "metrics.duckdb")
    assert (stored.points, stored.duplicates) == (2 * expected_points(STEPS, EVAL_POINTS), 0)
    assert checksums(data) == before
