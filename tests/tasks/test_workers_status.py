"""`gamma-lab status --workers` and the JSON log lines of a lab's processes, with real processes: a
redis-server, a `gamma-lab worker`, a `gamma-lab recorder`, local workers in embedded mode."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.faults.conftest import (
    RedisProc,
    base_env,
    cli,
    kill_local_workers,
    registry_runs,
    small_spec,
    spawn,
    stop,
    wait_for,
)

pytestmark = pytest.mark.slow
STEPS = 40000  # long enough to be listed while it trains; the test cancels it once it has looked
FIELDS = {"time", "level", "logger", "message", "process", "host"}


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisProc]:
    server = RedisProc(tmp_path / "redis", appendonly=False)
    server.start()
    yield server
    server.kill()


def json_lines(log: Path) -> list[dict]:
    """Every line of the log as a JSON object (fails naming the first line that is not one)."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line in {log.name}: {line!r}") from None
        assert FIELDS <= set(out[-1]), out[-1]
    return out


def _launch(env: dict[str, str], folder: Path) -> tuple[str, list[str]]:
    spec = folder / "watch.toml"
    spec.write_text(small_spec("watch", steps=STEPS))
    res = cli(env, "sweep", str(spec))
    assert res.returncode == 0, res.stderr
    sweep_id = res.stdout.split()[-1]
    return sweep_id, [r["run_id"] for r in registry_runs(folder / "data")]


def _listing_while_training(env: dict[str, str]) -> str:
    """`status --workers` once it shows the two runs training (it records waiting events itself)."""

    def listing() -> str | None:
        res = cli(env, "status", "--workers")
        assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
        return res.stdout if "running 2 run(s)" in res.stdout else None

    return str(wait_for(listing, 180, "status --workers to list the runs training", every=1.0))


def test_a_celery_worker_logs_json_lines_and_is_listed_with_the_runs_it_trains(tmp_path: Path, redis) -> None:  # type: ignore[no-untyped-def]
    env = base_env(tmp_path / "data", GAMMA_LAB_BROKER_URL=redis.url)
    (tmp_path / "data").mkdir()
    worker_log, recorder_log = tmp_path / "worker.log", tmp_path / "recorder.log"
    procs = [spawn(env, ["recorder"], recorder_log), spawn(env, ["worker", "--queue", "cpu"], worker_log)]
    try:
        wait_for(lambda: " ready." in worker_log.read_text(errors="replace"), 120, "the worker to be ready")
        idle = cli(env, "status", "--workers")
        assert idle.returncode == 0, idle.stderr
        header, row = idle.stdout.splitlines()
        assert header.split() == ["worker", "host", "device", "queue", "pid", "heartbeat", "state"]
        node, host, device, queue, pid, age, unit, _ago, state = row.split()
        assert node.startswith("gamma-lab-cpu-cpu-") and host == socket.gethostname() and device == "cpu"
        assert queue == "cpu" and pid == str(procs[1].pid) and float(age) < 30 and state == "idle"

        sweep_id, run_ids = _launch(env, tmp_path)
        busy = _listing_while_training(env)
        assert busy.splitlines()[1].startswith(node) and busy.splitlines()[1].endswith("running 2 run(s)")
        for rid in run_ids:  # the runs it trains, each with its sweep, indented under the worker
            assert f"    {rid} (sweep {sweep_id}) γ=1 η=" in busy, busy
        assert cli(env, "cancel", sweep_id).returncode == 0

        lines = json_lines(worker_log)
        assert any(x["message"].endswith(" ready.") and x["logger"].startswith("celery") for x in lines), lines
        assert {x["host"] for x in lines} == {socket.gethostname()}
        assert any(x["message"].startswith("recording ") for x in json_lines(recorder_log))
    finally:
        for p in procs:
            stop(p)


def test_embedded_mode_lists_its_local_workers_and_their_runs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    env = base_env(data)
    try:
        sweep_id, run_ids = _launch(env, tmp_path)
        busy = _listing_while_training(env)
        (pid,) = [p.name for p in (data / "queue" / "workers").iterdir()]
        name = f"{socket.gethostname()}:{pid}"
        row = busy.splitlines()[1].split()
        assert row[:5] == [name, socket.gethostname(), "cpu", "local", pid], busy
        assert row[6:8] == ["s", "ago"], busy  # its heartbeat: its runs' latest
        for rid in run_ids:
            assert f"    {rid} (sweep {sweep_id})" in busy, busy
        assert cli(env, "cancel", sweep_id).returncode == 0
    finally:
        kill_local_workers(data)


def test_a_broker_that_is_down_is_said_in_one_line(tmp_path: Path) -> None:
    env = base_env(tmp_path / "data", GAMMA_LAB_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    res = cli(env, "status", "--workers")
    assert res.returncode == 2 and res.stdout == "", res
    (line,) = res.stderr.splitlines()
    assert line.startswith("error: broker: cannot reach redis://127.0.0.1:"), line
