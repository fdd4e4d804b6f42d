"""Embedded mode's queue: unit files in `<data_dir>/queue/`, claimed atomically with os.rename.

    queue/pending/<order>-<unit_id>.json     waiting (written to a temp name, then renamed in)
    queue/claimed/<unit_id>.<pid>.json       being trained by worker <pid>
    queue/workers/<pid>                      one file per live worker process

Files, not a multiprocessing pool, so that workers outlive the command that submitted the work (the
CLI returns at once; the dashboard may restart) and so that several submitting processes share one
queue. os.rename within one folder is atomic on POSIX: exactly one worker wins a unit.

The executor starts workers with `subprocess.Popen([sys.executable, "-m", "tasks.local_worker"])`:
a multiprocessing spawn pool re-imports `__main__`, which under `streamlit run` is the page script.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tasks.planner import WorkUnit


def queue_dir(settings: Any) -> Path:
    return Path(settings.data_dir) / "queue"


def _dirs(settings: Any) -> tuple[Path, Path, Path]:
    root = queue_dir(settings)
    dirs = (root / "pending", root / "claimed", root / "workers")
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    return dirs


def enqueue(settings: Any, units: Iterable[WorkUnit]) -> int:
    pending, _, _ = _dirs(settings)
    n = 0
    for unit in units:
        # nanosecond time prefix: first submitted, first claimed
        name = f"{time.time_ns():020d}-{unit.unit_id}.json"
        tmp = pending / f".{name}.tmp"
        tmp.write_text(unit.to_json())
        os.replace(tmp, pending / name)  # atomic: a worker never sees half a file
        n += 1
    return n


def pending_units(settings: Any) -> list[Path]:
    pending, _, _ = _dirs(settings)
    return sorted(p for p in pending.iterdir() if p.suffix == ".json" and not p.name.startswith("."))


def claim(settings: Any) -> tuple[Path, str] | None:
    """Take the oldest pending unit. Returns (claimed path, unit JSON) or None when the queue is empty."""
    _, claimed, _ = _dirs(settings)
    for path in pending_units(settings):
        unit_id = path.stem.split("-", 1)[-1]
        target = claimed / f"{unit_id}.{os.getpid()}.json"
        try:
            os.rename(path, target)  # atomic; the loser gets FileNotFoundError and tries the next
        except FileNotFoundError:
            continue
        return target, target.read_text()
    return None


def release(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of this process is dead too (the submitting process may be its parent)
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def live_workers(settings: Any) -> list[int]:
    """PIDs of worker processes alive now; stale registrations (killed workers) are removed."""
    _, claimed, workers = _dirs(settings)
    alive = []
    for f in workers.iterdir():
        try:
            pid = int(f.name)
        except ValueError:
            continue
        if _alive(pid):
            alive.append(pid)
        else:
            release(f)
    return alive


def register(settings: Any) -> Path:
    _, _, workers = _dirs(settings)
    path = workers / str(os.getpid())
    path.touch()
    return path


def drop_stale_claims(settings: Any) -> list[str]:
    """Claimed files of dead workers: their runs go `lost` via the heartbeat timeout; `rerun` requeues
    them. Removed here (not requeued: a unit that kills its worker would otherwise loop forever)."""
    _, claimed, _ = _dirs(settings)
    dropped = []
    for f in claimed.iterdir():
        parts = f.name.split(".")
        if len(parts) == 3 and parts[1].isdigit() and not _alive(int(parts[1])):
            release(f)
            dropped.append(parts[0])
    return dropped


def remove_pending(settings: Any, run_ids: set[str]) -> int:
    """Drop pending units all of whose runs are in `run_ids` (cancelled before any worker took them)."""
    n = 0
    for path in pending_units(settings):
        try:
            unit = WorkUnit.from_json(path.read_text())
        except (OSError, ValueError):
            continue
        if set(unit.run_ids) <= run_ids:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                n += 1
    return n


def ensure_workers(settings: Any, *, n: int | None = None, env: dict[str, str] | None = None) -> list[int]:
    """Start workers until min(n, pending units) are alive. Returns the PIDs started now.

    Units are written before this looks at the workers, and a worker re-checks the queue after
    deregistering: between the two, no unit is ever left without a worker.
    """
    n = n or settings.workers
    alive = live_workers(settings)
    want = min(n, len(pending_units(settings)) + len(alive))
    procs: list[subprocess.Popen[bytes]] = []
    threads = max(1, (os.cpu_count() or 1) // max(n, 1))  # split the cores across the workers
    child_env = dict(os.environ if env is None else env)
    child_env["GAMMA_LAB_DATA"] = str(settings.data_dir)
    child_env.setdefault("GAMMA_LAB_TORCH_THREADS", str(threads))
    log_path = queue_dir(settings) / "workers.log"
    for _ in range(max(0, want - len(alive))):
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tasks.local_worker"],
                env=child_env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives the submitting command and its Ctrl-C
            )
        procs.append(proc)
    # wait until each registered (or already exited), so a second call right away does not start more
    deadline = time.time() + 30
    while time.time() < deadline:
        live = set(live_workers(settings))
        if all(p.poll() is not None or p.pid in live for p in procs):
            break
        time.sleep(0.05)
    return [p.pid for p in procs]
