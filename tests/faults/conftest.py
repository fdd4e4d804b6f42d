"""The fault suite's tools: real processes (redis-server, `gamma-lab` commands, workers, recorders),
real files, and counts of what was stored.

Every test here injects one fault an operator meets (a broker restart, a killed process, a damaged
or full or read-only data folder), then counts points (expected vs stored, duplicates 0) and final
run states. The README's "what survives what" table links each row to one of these tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.slow


def small_spec(
    name: str = "fault",
    *,
    gammas: tuple[float, ...] = (1.0,),
    etas: tuple[float, ...] = (0.01, 0.1),
    seeds: tuple[int, ...] = (0,),
    steps: int = 200,
    width: int = 16,
    eval_points: int = 3,
) -> str:
    """A teacher-data MLP sweep small enough for 2 cores: len(gammas)·len(etas)·len(seeds) runs of
    `steps` steps; train_loss is logged every step, test_loss/test_acc at `eval_points` steps."""
    g = ", ".join(repr(float(x)) for x in gammas)
    e = ", ".join(repr(float(x)) for x in etas)
    s = ", ".join(str(int(x)) for x in seeds)
    return f"""
name = "{name}"
[model]
width = {width}
[data]
dataset = "teacher"
input_dim = 8
n_classes = 2
[train]
steps = {steps}
batch_size = 16
eval_points = {eval_points}
metrics = ["test"]
[grid]
gamma = [{g}]
eta = [{e}]
seeds = [{s}]
"""


def base_env(data: Path, **extra: str) -> dict[str, str]:
    """A user's shell: no inherited GAMMA_LAB_* settings, fast heartbeats, one torch thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAMMA_LAB_")}
    env.update(
        GAMMA_LAB_DATA=str(data),
        GAMMA_LAB_HEARTBEAT_S="1",
        GAMMA_LAB_LOST_AFTER_S="5",
        GAMMA_LAB_WORKERS="1",
        GAMMA_LAB_TORCH_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def cli(
    env: dict[str, str], *args: str, timeout: float = 300, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `gamma-lab ARGS` as a user would (a real process); never raises on a non-zero exit."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
    )


def spawn(env: dict[str, str], args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start a long-lived `gamma-lab ARGS` (a worker, a recorder, a `sweep --wait`) logging to `log`."""
    out = open(log, "ab")  # noqa: SIM115 - handed to the child, closed with the test
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def kill_local_workers(data: Path) -> None:
    """SIGKILL every local worker registered in (or holding a claim of) the data folder's queue."""
    for folder in (data / "queue" / "workers", data / "queue" / "claimed"):
        for f in folder.glob("*") if folder.is_dir() else []:
            pid = f.name.split(".")[1] if "." in f.name else f.name
            if pid.isdigit():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(pid), signal.SIGKILL)


def wait_for(pred: Callable[[], object], timeout: float, what: str, every: float = 0.2) -> object:
    """Poll `pred` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class StoreCounts:
    points: int  # rows in the points table
    duplicates: int  # rows whose (run, attempt, seq, step, metric) occurs more than once
    per_run: dict[tuple[str, int], int]  # (run_id, attempt) -> points


def store_counts(metrics_path: Path) -> StoreCounts:
    """Count what the DuckDB file holds, read-only (call when no recorder holds it)."""
    import duckdb

    conn = duckdb.connect(str(metrics_path), read_only=True)
    try:
        total = conn.execute("SELECT count(*) FROM points").fetchone()[0]
        dups = conn.execute(
            "SELECT coalesce(sum(c - 1), 0) FROM (SELECT count(*) c FROM points "
            "GROUP BY run_key, attempt, seq, step, metric HAVING count(*) > 1)"
        ).fetchone()[0]
        rows = conn.execute(
            "SELECT k.run_id, p.attempt, count(*) FROM points p JOIN run_keys k USING (run_key) GROUP BY 1, 2"
        ).fetchall()
    finally:
        conn.close()
    return StoreCounts(int(total), int(dups), {(r, int(a)): int(n) for r, a, n in rows})


def registry_runs(data: Path, registry_url: str | None = None) -> list[dict]:
    """Every run of the registry (status, attempt, steps_done, error, ...)."""
    from storage.registry import Registry

    url = registry_url or f"sqlite:///{data / 'registry.sqlite'}"
    with Registry(url) as reg:
        ids = [s["id"] for s in reg.list_sweeps()]
        out: dict[str, dict] = {}
        for sid in ids:
            for r in reg.list_runs(sid):
                out[r["run_id"]] = r
    return list(out.values())


def expected_points(steps: int, eval_points: int, n_test_metrics: int = 2) -> int:
    """Points one run logs when it trains all its steps: train_loss every step plus the test metrics
    (test_loss, test_acc) at each eval step."""
    from engine.trainer import eval_steps

    return steps + n_test_metrics * len(eval_steps(steps, eval_points))


class RedisProc:
    """A private redis-server that a test can stop and start again on the same port and folder,
    with (`appendonly=True`: as docker/compose.yml runs it) or without persistence."""

    def __init__(self, folder: Path, *, appendonly: bool):
        self.exe = shutil.which("redis-server")
        if self.exe is None:
            pytest.skip("redis-server not installed (apt-get install redis-server)")
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.exe or "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(self.folder),
            "--appendonly",
            "yes" if self.appendonly else "no",
        ]
        if self.appendonly:
            args += ["--appendfsync", "always"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=self.port)
        try:
            wait_for(lambda: _pings(client), 20, f"redis-server on port {self.port}", every=0.05)
        finally:
            client.close()

    def shutdown_nosave(self) -> None:
        """What `redis-cli shutdown nosave` does: the server exits without writing an RDB file (the
        append-only file, when on, already holds every write)."""
        # redis-cli, not redis-py: the client library retries a SHUTDOWN whose reply never comes
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown", "nosave"], capture_output=True, timeout=20)
        if self.proc is not None:
            self.proc.wait(20)
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


def _pings(client: object) -> bool:
    import redis

    try:
        return bool(client.ping())  # type: ignore[attr-defined]
    except redis.ConnectionError:
        return False


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisProc]]:
    """Make private, restartable redis-servers; all are killed at the end."""
    made: list[RedisProc] = []

    def make(*, appendonly: bool) -> RedisProc:
        r = RedisProc(tmp_path / f"redis-{len(made)}", appendonly=appendonly)
        r.start()
        made.append(r)
        return r

    yield make
    for r in made:
        r.kill()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Path]:
    """A data folder; its local workers are killed at the end, even when the test failed midway."""
    data = tmp_path / "data"
    data.mkdir()
    yield data
    kill_local_workers(data)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount a tmpfs of the given size (e.g. "5m") and return its path; skipped with the reason where
    mounting is not allowed (CI here runs as root and allows it)."""
    mounted: list[Path] = []

    def make(size: str) -> Path:
        target = tmp_path / f"tmpfs-{len(mounted)}"
        target.mkdir()
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)], capture_output=True, text=True
        )
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or res.returncode}); needs root")
        mounted.append(target)
        return target

    yield make
    for target in mounted:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)
