"""`gamma-lab sweep --wait`'s overheads (issue #13 item 5, bench/end_to_end.py): the local worker
started before the launch queues its units, and the spool written beside training.

- tasks.worker._InOrder: events reach the spool in the order published, flush waits for them, the
  writer's error is raised by the next publish and by flush, and nothing after it is written;
- SpoolPublisher.publish_many: several events fsynced side by side, visible in order; an error
  stops at that event (the ones before it published, no temporary file left);
- tasks.local_queue.start_early: one worker, registered at once (the launch's count sees it), none
  when one is alive; with no unit it leaves once its launcher is gone; a refused spec starts none.
No timed assertion.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from storage.bus import SpoolConsumer, SpoolPublisher, decode
from storage.diskspace import DiskFull
from storage.settings import load_settings
from tasks import local_queue
from tasks.worker import _InOrder

ROOT = Path(__file__).resolve().parents[2]


def _event(i: int) -> dict:
    return {"type": "started", "run_id": f"r{i:03d}", "attempt": 1, "worker": "w", "time": float(i)}


def _spooled(spool: Path) -> list[str]:
    return [decode((spool / n).read_bytes())["run_id"] for n in sorted(os.listdir(spool)) if n.endswith(".evt")]


class Slow:
    """A publisher that takes its time and can fail at one event."""

    def __init__(self, fail_at: str | None = None) -> None:
        self.got: list[str] = []
        self.fail_at = fail_at
        self.gate = threading.Event()

    def publish(self, event: dict) -> None:
        self.gate.wait(5)
        if event["run_id"] == self.fail_at:
            raise DiskFull("/data")
        self.got.append(event["run_id"])


def test_in_order_writes_in_order_and_flush_waits() -> None:
    inner = Slow()
    pub = _InOrder(inner)
    for i in range(20):
        pub.publish(_event(i))  # returns at once: the writer waits at the gate
    assert inner.got == []
    inner.gate.set()
    pub.flush()
    assert inner.got == [f"r{i:03d}" for i in range(20)]
    pub.close()
    pub.publish(_event(99))  # after close (a late heartbeat): written at once
    assert inner.got[-1] == "r099"


def test_in_order_raises_the_writers_error_and_drops_what_follows() -> None:
    inner = Slow(fail_at="r003")
    pub = _InOrder(inner)
    for i in range(3):
        pub.publish(_event(i))
    inner.gate.set()
    pub.publish(_event(3))
    with pytest.raises(DiskFull):
        pub.flush()
    with pytest.raises(DiskFull):
        pub.publish(_event(4))
    pub.close()
    assert inner.got == ["r000", "r001", "r002"]


def test_in_order_close_writes_what_is_queued() -> None:
    inner = Slow()
    pub = _InOrder(inner)
    for i in range(5):
        pub.publish(_event(i))
    inner.gate.set()
    pub.close()  # an unexpected error in the unit: what it published still reaches the bus
    assert inner.got == [f"r{i:03d}" for i in range(5)]


def test_spool_batch_is_visible_in_order(tmp_path: Path) -> None:
    pub = SpoolPublisher(tmp_path / "spool")
    pub.publish_many([_event(i) for i in range(40)])
    pub.publish(_event(40))
    pub.close()
    assert _spooled(tmp_path / "spool") == [f"r{i:03d}" for i in range(41)]
    assert not os.listdir(tmp_path / "spool" / "tmp")
    got = SpoolConsumer(tmp_path / "spool").read(100, block_s=0)
    assert [d.event["run_id"] for d in got] == [f"r{i:03d}" for i in range(41)]


def test_spool_batch_error_stops_at_that_event(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pub = SpoolPublisher(tmp_path / "spool")
    real = pub._write_tmp

    def write(name: str, ev: dict) -> Exception | None:
        return OSError(5, "I/O error") if ev["run_id"] == "r005" else real(name, ev)

    monkeypatch.setattr(pub, "_write_tmp", write)
    with pytest.raises(OSError, match="I/O error"):
        pub.publish_many([_event(i) for i in range(10)])
    pub.close()
    assert _spooled(tmp_path / "spool") == [f"r{i:03d}" for i in range(5)]
    assert not os.listdir(tmp_path / "spool" / "tmp")
    with pytest.raises(TypeError):  # not an OSError (an event that cannot be encoded): the same
        pub.publish_many([_event(10), {**_event(11), "time": object()}, _event(12)])
    assert _spooled(tmp_path / "spool")[-1] == "r010"
    assert not os.listdir(tmp_path / "spool" / "tmp")


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not local_queue._is_worker(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_start_early_registers_one_worker_that_leaves_with_its_launcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parent: subprocess.Popen[bytes]
) -> None:
    settings = load_settings(data_dir=tmp_path / "data", workers=1)
    settings.ensure_dirs()
    for name in (local_queue.WARM_ENV, local_queue.PARENT_ENV, local_queue.EARLY_ENV):
        monkeypatch.delenv(name, raising=False)
    pid = local_queue.start_early(settings, wait_s=120, parent=parent.pid)
    assert pid is not None
    log = (tmp_path / "data" / "queue" / "workers.log").read_text
    assert local_queue.live_workers(settings) == [pid]  # registered before start_early returned
    assert local_queue.start_early(settings) is None, log()  # one is alive: it takes the work
    assert local_queue.ensure_workers(settings) == [], log()  # nor does the launch start another
    deadline = time.monotonic() + 120
    while "worker ready" not in log() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "worker ready" in log(), log()
    assert not _gone(pid, 1.0)  # no unit yet: it waits while its launcher lives
    parent.kill()  # the stand-in for the `gamma-lab sweep` that started it
    parent.wait()
    assert _gone(pid, 30), "the early worker stayed after its launcher was gone"
    assert local_queue.live_workers(settings) == []


def test_a_refused_spec_starts_no_early_worker(tmp_path: Path) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text('name = "bad"\n[model]\nwidth = -3\n[grid]\ngamma = [1.0]\neta = [0.1]\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAMMA_LAB_")}
    env["GAMMA_LAB_DATA"] = str(tmp_path / "data")
    done = subprocess.run([sys.executable, "-m", "app.cli", "sweep", str(spec), "--wait"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2, done.stderr
    workers = tmp_path / "data" / "queue" / "workers"
    assert not (workers.is_dir() and any(workers.iterdir()))
    log = tmp_path / "data" / "queue" / "workers.log"
    assert not log.exists() or "worker ready" not in log.read_text()
    assert json.dumps(done.stdout) == '""'
