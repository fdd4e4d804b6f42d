"""The Celery path as a researcher drives it from the shell: a real redis-server on a private port,
real `gamma-lab worker` processes, the real `gamma-lab` command line."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")]

SPEC = """
name = "celery-cli"
[model]
width = 16
[data]
dataset = "teacher"
input_dim = 8
n_classes = 2
[train]
steps = 20
batch_size = 16
eval_points = 3
metrics = ["test"]
[grid]
gamma = [1.0]
eta = [0.01, 0.1]
"""


@pytest.fixture()
def shell(tmp_path: Path, redis_url: str) -> Iterator[tuple[dict[str, str], list[subprocess.Popen[bytes]]]]:
    """The environment a user's shell would have, and the worker processes started (stopped at the end)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAMMA_LAB_")}
    env.update(GAMMA_LAB_DATA=str(tmp_path / "data"), GAMMA_LAB_BROKER_URL=redis_url, GAMMA_LAB_TORCH_THREADS="1")
    workers: list[subprocess.Popen[bytes]] = []
    yield env, workers
    for p in workers:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in workers:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


def _start_worker(env: dict[str, str], workers: list[subprocess.Popen[bytes]], log: Path) -> None:
    with open(log, "ab") as out:
        workers.append(
            subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker", "--loglevel", "INFO"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        )


def _wait_ready(logs: list[Path]) -> None:
    for _ in range(1200):
        if all(p.exists() and " ready." in p.read_text(errors="replace") for p in logs):
            return
        time.sleep(0.1)
    raise AssertionError("workers never said ready:\n" + "\n".join(p.read_text(errors="replace") for p in logs))


def test_sweep_without_a_worker_says_so_then_runs_once_one_starts(shell, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # A user launched a Celery sweep before starting any worker: it sat `queued` with no word why.
    env, workers = shell
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    res = _cli(env, "sweep", str(spec))
    assert res.returncode == 0, res.stderr
    sweep_id = res.stdout.strip().splitlines()[-1]
    assert "no Celery worker consumes the 'cpu' queue now" in res.stderr, res.stderr
    assert "gamma-lab worker" in res.stderr

    _start_worker(env, workers, tmp_path / "w0.log")
    for _ in range(1200):
        status = _cli(env, "status", sweep_id).stdout
        if "queued" not in status and "running" not in status:
            break
        time.sleep(0.2)
    assert "done" in status.splitlines()[0], status

    # with a worker on the queue, a second sweep queues without the warning
    res = _cli(env, "sweep", str(spec), "--rerun", "--wait")
    assert res.returncode == 0 and "no Celery worker" not in res.stderr, res.stderr


def test_two_workers_on_one_machine_have_their_own_node_names(shell, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Two `gamma-lab worker` on one machine were both `gamma-lab-cpu-cpu@host`: Celery's remote
    # control (inspect, ping) merged their replies and warned of a duplicate node name.
    env, workers = shell
    logs = [tmp_path / "w0.log", tmp_path / "w1.log"]
    for log in logs:
        _start_worker(env, workers, log)
    _wait_ready(logs)
    from tasks.celery_app import configure

    app = configure(env["GAMMA_LAB_BROKER_URL"])
    with app.connection_for_write(env["GAMMA_LAB_BROKER_URL"]) as conn:
        replies = app.control.ping(timeout=10.0, limit=2, connection=conn)
    names = [name for reply in replies for name in reply]
    assert len(names) == 2 and len(set(names)) == 2, names
