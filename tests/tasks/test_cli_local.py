"""The local executor end to end through the real `gamma-lab` console script (subprocesses)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from storage.registry import Registry

TINY = """
name = "tiny-cli"
[model]
width = 16
[data]
dataset = "teacher"
input_dim = 8
n_classes = 2
[train]
steps = 60
batch_size = 16
eval_points = 3
metrics = ["test"]
[grid]
gamma = [0.1, 1.0]
eta = [0.01, 100.0]
seeds = [0, 1]
"""


def _env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAMMA_LAB_")}
    env.update(GAMMA_LAB_DATA=str(data), GAMMA_LAB_HEARTBEAT_S="1", GAMMA_LAB_LOST_AFTER_S="5",
               GAMMA_LAB_WORKERS="2")
    return env


def _cli(data: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    exe = [sys.executable, "-m", "app.cli"] if os.environ.get("GAMMA_LAB_CLI_MODULE") else ["gamma-lab"]
    return subprocess.run([*exe, *args], env=_env(data), capture_output=True, text=True, timeout=timeout)


def test_bad_spec_exits_2_with_messages_and_queues_nothing(tmp_path: Path) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text(TINY.replace("width = 16", "width = -3\nactivation = \"gelu\"").replace(
        "gamma = [0.1, 1.0]", "gamma = [0.0, 1.0]"))
    res = _cli(tmp_path, "sweep", str(spec))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    for field in ("model.width", "model.activation", "grid.gamma"):
        assert field in res.stderr
    assert res.stdout.strip() == ""
    status = _cli(tmp_path, "status")
    assert status.returncode == 0 and len(status.stdout.strip().splitlines()) == 1  # header only
    assert not (tmp_path / "queue" / "pending").exists() or not list((tmp_path / "queue" / "pending").iterdir())

    missing = _cli(tmp_path, "sweep", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "no such file" in missing.stderr and "Traceback" not in missing.stderr
    folder = _cli(tmp_path, "sweep", str(tmp_path))
    assert folder.returncode == 2 and "is a directory" in folder.stderr and "Traceback" not in folder.stderr
    (tmp_path / "empty.toml").write_text("")
    empty = _cli(tmp_path, "sweep", str(tmp_path / "empty.toml"))
    assert empty.returncode == 2 and "spec: is empty" in empty.stderr and empty.stdout.strip() == ""
    unknown = _cli(tmp_path, "cancel", "no-such-id")
    assert unknown.returncode == 2 and "neither a sweep nor a run" in unknown.stderr


@pytest.mark.slow
def test_sweep_wait_export_and_reuse(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY)
    res = _cli(tmp_path, "sweep", str(spec), "--wait")
    assert res.returncode == 0, res.stderr
    sweep_id = res.stdout.strip().splitlines()[-1]
    assert len(sweep_id) == 12 and sweep_id.isalnum()

    runs = pd.read_csv(io.StringIO(_cli(tmp_path, "export", sweep_id).stdout))
    assert list(runs.columns) == ["run_id", "gamma", "eta", "seed", "status", "steps_done", "diverged_step",
                                  "final_train_loss", "best_train_loss", "final_test_loss", "final_test_acc"]
    assert len(runs) == 8
    assert set(runs[runs.eta == 0.01].status) == {"done"} and set(runs[runs.eta == 100.0].status) == {"diverged"}
    assert (runs[runs.status == "done"].steps_done == 60).all()
    assert runs[runs.status == "done"].final_train_loss.notna().all()

    out = tmp_path / "series.parquet"
    res = _cli(tmp_path, "export", sweep_id, "--series", "--format", "parquet", "--out", str(out))
    assert res.returncode == 0, res.stderr
    series = pd.read_parquet(out)
    assert list(series.columns) == ["run_id", "gamma", "eta", "seed", "step", "metric", "value"]
    train = series[series.metric == "train_loss"]
    assert not train.duplicated(["run_id", "step"]).any()
    done_ids = set(runs[runs.status == "done"].run_id)
    per_run = train[train.run_id.isin(done_ids)].groupby("run_id").step.agg(["count", "max"])
    assert (per_run["count"] == 60).all() and (per_run["max"] == 59).all()

    # the same cells again: their stored results are reused, nothing is retrained
    again = _cli(tmp_path, "sweep", str(spec), "--wait")
    assert again.returncode == 0, again.stderr
    second = again.stdout.strip().splitlines()[-1]
    assert second != sweep_id
    runs2 = pd.read_csv(io.StringIO(_cli(tmp_path, "export", second).stdout))
    assert sorted(runs2.run_id) == sorted(runs.run_id)
    with Registry(f"sqlite:///{tmp_path / 'registry.sqlite'}") as reg:
        assert {r["attempt"] for r in reg.get_runs(list(runs.run_id))} == {0}
    status = _cli(tmp_path, "status", runs.run_id[0])
    assert status.returncode == 0 and "attempt: 0" in status.stdout

    # --rerun retrains them as a new attempt; old and new points never mix
    rerun = _cli(tmp_path, "sweep", str(spec), "--wait", "--rerun")
    assert rerun.returncode == 0, rerun.stderr
    res = _cli(tmp_path, "export", sweep_id, "--series", "--format", "csv", "--out", str(tmp_path / "s2.csv"))
    assert res.returncode == 0, res.stderr
    series2 = pd.read_csv(tmp_path / "s2.csv")
    train2 = series2[series2.metric == "train_loss"]
    assert not train2.duplicated(["run_id", "step"]).any()
    assert len(train2) == len(train)
    with Registry(f"sqlite:///{tmp_path / 'registry.sqlite'}") as reg:
        assert {r["attempt"] for r in reg.get_runs(list(runs.run_id))} == {1}


@pytest.mark.slow
def test_status_and_export_after_a_plain_sweep_catch_up(tmp_path: Path) -> None:
    # A user ran `gamma-lab sweep` (no --wait, no dashboard) and `gamma-lab status` said `queued`
    # forever: the workers had finished but no process recorded their events.
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY.replace("gamma = [0.1, 1.0]", "gamma = [1.0]").replace("seeds = [0, 1]", "seeds = [0]"))
    res = _cli(tmp_path, "sweep", str(spec))
    assert res.returncode == 0, res.stderr
    sweep_id = res.stdout.strip().splitlines()[-1]
    pending = tmp_path / "queue" / "pending"
    for _ in range(240):  # the local workers take the unit and finish it; then nothing is pending
        status = _cli(tmp_path, "status", sweep_id)
        assert status.returncode == 0, status.stderr
        if "queued" not in status.stdout and "running" not in status.stdout:
            break
        time.sleep(0.5)
    assert not list(pending.iterdir())
    runs = pd.read_csv(io.StringIO(_cli(tmp_path, "export", sweep_id).stdout))
    assert sorted(runs.status) == ["diverged", "done"]


def test_corrupt_store_files_named_nothing_queued_nothing_reset(tmp_path: Path) -> None:
    # A user with a junk <data>/metrics.duckdb or registry.sqlite saw raw DuckDB/SQLAlchemy tracebacks.
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY)
    junk = bytes(range(256)) * 20
    metrics = tmp_path / "metrics.duckdb"
    metrics.write_bytes(junk)
    for args in (("sweep", str(spec)), ("sweep", str(spec), "--wait")):
        res = _cli(tmp_path, *args)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert str(metrics) in res.stderr and "Move it aside" in res.stderr and res.stdout.strip() == ""
    status = _cli(tmp_path, "status")  # the registry is fine: shown, with a warning about the metrics
    assert status.returncode == 0 and "Traceback" not in status.stderr and "warning" in status.stderr
    assert len(status.stdout.strip().splitlines()) == 1  # header only: nothing was queued
    assert metrics.read_bytes() == junk

    metrics.unlink()
    registry = tmp_path / "registry.sqlite"
    registry.write_bytes(junk)
    for args in (("status",), ("export", "abc"), ("sweep", str(spec))):
        res = _cli(tmp_path, *args)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert str(registry) in res.stderr and "Move it aside" in res.stderr
    assert registry.read_bytes() == junk


def test_export_to_an_unwritable_path_is_one_clear_line(tmp_path: Path) -> None:
    # A user exporting to a missing folder or a directory saw a pandas/OSError traceback.
    with Registry(f"sqlite:///{tmp_path / 'registry.sqlite'}") as reg:
        sweep_id = reg.create_sweep("empty", "alice", {}, executor="local")
    cases = [("--out", str(tmp_path / "no" / "such" / "x.csv")), ("--out", str(tmp_path)),
             ("--format", "parquet", "--out", str(tmp_path / "missing" / "x.parquet"))]
    for extra in cases:
        res = _cli(tmp_path, "export", sweep_id, *extra)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert res.stderr.startswith("error: export:") and extra[-1] in res.stderr


def test_worker_without_broker_and_bad_executor(tmp_path: Path) -> None:
    res = _cli(tmp_path, "worker", "--queue", "gpu", "--device", "cuda:0")
    assert res.returncode == 2 and "GAMMA_LAB_BROKER_URL" in res.stderr and "Traceback" not in res.stderr
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY)
    res = _cli(tmp_path, "sweep", str(spec), "--executor", "celery")
    assert res.returncode == 2 and "executor" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_serve_binds_localhost(tmp_path: Path) -> None:
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = _env(tmp_path)
    env["HOME"] = str(tmp_path)  # streamlit writes its config/credentials under ~
    proc = subprocess.Popen(["gamma-lab", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("the dashboard never listened on 127.0.0.1")
        out = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
        listening = [line for line in out.splitlines() if f":{port} " in line]
        assert listening and all("127.0.0.1" in line for line in listening)  # not 0.0.0.0
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(20)
