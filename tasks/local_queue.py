"""Embedded mode's queue: unit files in `<data_dir>/queue/`, claimed atomically with os.rename.

    queue/pending/<order>-<unit_id>.json     waiting (written to a temp name, then renamed in)
    queue/claimed/<unit_id>.<pid>.json       being trained by worker <pid>
    queue/workers/<pid>                      one file per live worker process
    queue/.lock                              flock: counting and starting workers, recovering dead ones

Files, not a multiprocessing pool, so that workers outlive the command that submitted the work (the
CLI returns at once; the dashboard may restart) and so that several submitting processes share one
queue. os.rename within one folder is atomic on POSIX: exactly one worker wins a unit.

The executor starts workers with `subprocess.Popen([sys.executable, "-m", "tasks.local_worker"])`:
a multiprocessing spawn pool re-imports `__main__`, which under `streamlit run` is the page script.

Supervision (`supervise`): a worker killed (kill -9, the OOM killer) leaves its claimed file behind
and, when it was the only one, pending units nobody trains. Whoever is around supervises, under the
lock: `sweep --wait` (every poll), the dashboard (a thread), `status` and `rerun`, each submit
(ensure_workers), the adaptive driver and every live worker before it claims. A dead worker's unit
goes back to the front of the queue as a NEW attempt of its unfinished runs (points are keyed by
(run, attempt, seq) and a re-execution restarts seq at 0), unless that unit had already killed a
worker (MAX_WORKER_DEATHS): then its runs are marked `lost` with the reason, so a unit that kills its
worker cannot loop for ever. Then workers are started until min(GAMMA_LAB_WORKERS, work) are alive.
The count holds under concurrent launches: counting and starting happen under the lock, a started
worker has registered before the lock is released, and an exiting worker holds the lock until its
process is gone.

Warm workers: the dashboard started by `gamma-lab serve` starts its workers at once (warm_up) and
they wait up to GAMMA_LAB_WARM_WORKERS seconds for the next unit (torch imported) before they leave,
and leave as soon as that dashboard (GAMMA_LAB_WORKER_PARENT) is gone: a launch from the dashboard
does not pay a worker's start-up (several seconds of a quick demo's ~10). Workers started from a
shell leave when the queue is empty, as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from storage.ownership import pid_alive, read_owner
from storage.settings import Settings
from tasks.planner import WorkUnit, _unit_id

log = logging.getLogger("gamma_lab.local_queue")
MAX_WORKER_DEATHS = 2  # a unit whose worker died this many times is not retried: its runs are lost
FRONT = f"{0:020d}"  # the order prefix of a requeued unit: it was started before anything pending
UNFINISHED = ("queued", "running", "lost")
LOCK_TIMEOUT_S = 60.0  # a process stuck holding the queue lock must not hang every launch for ever
WARM_ENV = "GAMMA_LAB_WARM_WORKERS"  # seconds an idle worker waits for work (set by `gamma-lab serve`)
PARENT_ENV = "GAMMA_LAB_WORKER_PARENT"  # the dashboard's pid: its warm workers leave when it is gone
WARM_POLL_S = 0.05  # a listing of pending/: cheap; a warm worker takes a unit within 50 ms
EARLY_ENV = "GAMMA_LAB_WORKER_EARLY"  # seconds an early worker (start_early) waits for its first unit
EARLY_WAIT_S = 30.0
EARLY_POLL_S = 0.02  # how often an early worker looks for its first unit (a listing of pending/)


def queue_dir(settings: Settings) -> Path:
    return Path(settings.data_dir) / "queue"


def _dirs(settings: Settings) -> tuple[Path, Path, Path]:
    root = queue_dir(settings)
    dirs = (root / "pending", root / "claimed", root / "workers")
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    return dirs


def _write_pending(pending: Path, name: str, text: str) -> None:
    tmp = pending / f".{name}.tmp"
    tmp.write_text(text)
    os.replace(tmp, pending / name)  # atomic: a worker never sees half a file


def enqueue(settings: Settings, units: Iterable[WorkUnit]) -> int:
    pending, _, _ = _dirs(settings)
    n = 0
    for unit in units:
        # nanosecond time prefix: first submitted, first claimed
        _write_pending(pending, f"{time.time_ns():020d}-{unit.unit_id}.json", unit.to_json())
        n += 1
    return n


def pending_units(settings: Settings) -> list[Path]:
    pending, _, _ = _dirs(settings)
    return sorted(p for p in pending.iterdir() if p.suffix == ".json" and not p.name.startswith("."))


def claim(settings: Settings) -> tuple[Path, str] | None:
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


def _is_worker(pid: int) -> bool:
    """Alive and a local worker: a dead worker's pid reused by another program must not look alive
    (its claim would never be recovered). Without /proc, being alive has to do."""
    if not pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"tasks.local_worker" in fh.read()
    except OSError:
        return True


def live_workers(settings: Settings, *, prune: bool = True) -> list[int]:
    """PIDs of worker processes alive now; stale registrations (killed workers) are removed unless
    `prune` is False (a read-only folder)."""
    _, _, workers = _dirs(settings)
    alive = []
    for f in workers.iterdir():
        try:
            pid = int(f.name)
        except ValueError:
            continue
        if _is_worker(pid):
            alive.append(pid)
        elif prune:
            release(f)
    return alive


def register(settings: Settings) -> Path:
    return register_pid(settings, os.getpid())


def register_pid(settings: Settings, pid: int) -> Path:
    _, _, workers = _dirs(settings)
    path = workers / str(pid)
    path.touch()
    return path


def remove_pending(settings: Settings, run_ids: set[str]) -> int:
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


# ----------------------------------------------------------------------------- the lock


class QueueBusy(TimeoutError):
    """The queue lock stayed held too long (a process stuck while holding it)."""


class QueueLock:
    """An exclusive flock on queue/.lock (between processes, and between threads of one process: each
    acquire opens its own file description). `keep_until_exit()` leaves it held until this process
    ends: an exiting worker is still a process, and no one may count it gone and start another."""

    _kept: list[int] = []  # noqa: RUF012 - descriptors held until exit, on purpose

    def __init__(self, settings: Settings, timeout_s: float = LOCK_TIMEOUT_S):
        self.path = queue_dir(settings) / ".lock"
        self.timeout_s = timeout_s
        self.fd: int | None = None

    def __enter__(self) -> QueueLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + self.timeout_s
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise QueueBusy(
                            f"the local queue's lock {self.path} has been held for {self.timeout_s:.0f} s"
                        ) from None
                    time.sleep(0.02)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the flock
            self.fd = None

    def keep_until_exit(self) -> None:
        if self.fd is not None:
            QueueLock._kept.append(self.fd)
            self.fd = None


# ----------------------------------------------------------------------------- supervision


@dataclass
class Recovery:
    """What became of a dead worker's unit."""

    pid: int
    unit_id: str
    sweep_id: str | None
    runs: int  # unfinished runs it held
    outcome: str  # "requeued" | "lost" | "finished" (nothing left to train) | "unreadable"
    reason: str = ""


@dataclass
class Supervision:
    recovered: list[Recovery] = field(default_factory=list)
    deferred: int = 0  # dead workers whose last events the recorder has not stored yet
    started: list[int] = field(default_factory=list)  # worker pids started now
    live: int = 0  # workers alive after this pass
    waiting_runs: int = 0  # runs in pending units before workers were started, when none was alive
    pending_runs: int = 0  # runs in pending units after this pass, when still no worker is alive
    error: str | None = None  # why supervision could not run (a read-only data folder, say)
    log_path: Path | None = None

    def lines(self) -> list[str]:
        """One line per thing a user should know (empty when all is well)."""
        out = []
        for r in self.recovered:
            sweep = f" of sweep {r.sweep_id}" if r.sweep_id else ""
            if r.outcome == "requeued":
                out.append(
                    f"local worker pid {r.pid} died while training {r.runs} run(s){sweep}: "
                    "queued again as a new attempt"
                )
            elif r.outcome == "lost":
                out.append(f"local worker pid {r.pid} died again while training {r.runs} run(s){sweep}: {r.reason}")
        if self.waiting_runs and self.live:
            pids = ", ".join(map(str, self.started))
            out.append(
                f"{self.waiting_runs} run(s) queued, no local worker alive: started {len(self.started)} (pid {pids})"
            )
        if self.live == 0 and self.pending_runs:
            if self.error:
                why = f"cannot start one ({self.error})"
            elif self.started:
                why = f"the worker started for them exited at once (see {self.log_path})"
            else:
                why = f"none could be started (see {self.log_path})"
            out.append(f"{self.pending_runs} run(s) queued, no local worker alive: {why}")
        return out


def _dead_claims(settings: Settings) -> list[tuple[Path, int]]:
    claimed = queue_dir(settings) / "claimed"
    if not claimed.is_dir():
        return []
    out = []
    for f in sorted(claimed.iterdir()):
        parts = f.name.split(".")
        if len(parts) == 3 and parts[2] == "json" and parts[1].isdigit() and not _is_worker(int(parts[1])):
            out.append((f, int(parts[1])))
    return out


def _last_words_pending(settings: Settings, pid: int) -> bool:
    """The dead worker's events still wait in the spool for a recorder that is running: decide once
    they are stored (a run it finished is then `done`, not retrained or marked lost, and a late
    heartbeat cannot revive a run marked lost). Not waited for when nobody records, nor after
    lost_after_s (a recorder that does not progress)."""
    if getattr(settings, "broker_url", None):
        return False  # Redis stream: cannot be looked into cheaply; the attempt guard still holds
    spool = Path(settings.spool_dir)
    try:
        with os.scandir(spool) as it:
            mine = [e.name for e in it if e.name.endswith(".evt") and f"-{pid}-" in e.name]
    except OSError:
        return False
    if not mine:
        return False
    try:
        newest_s = max(int(n.split("-", 1)[0]) for n in mine) / 1e9
    except ValueError:
        return False
    if time.time() - newest_s > float(getattr(settings, "lost_after_s", 120)):
        return False
    owner = read_owner(settings)
    return owner.pid is not None and pid_alive(owner.pid)


def _recover_one(settings: Settings, path: Path, pid: int) -> Recovery:
    """Requeue (a new attempt) or mark lost the unfinished runs of a dead worker's unit; the caller
    holds the lock. The new pending file is written before the claim is removed."""
    from storage.registry import Registry

    try:
        text = path.read_text()
        unit = WorkUnit.from_json(text)
        deaths = list(json.loads(text).get("deaths") or [])
    except (OSError, ValueError) as exc:
        release(path)
        log.error("dropped the unreadable unit %s of dead worker %d: %s", path.name, pid, exc)
        return Recovery(pid, path.name.split(".")[0], None, 0, "unreadable", str(exc))
    deaths.append({"pid": pid, "time": time.time()})
    planned = dict(zip(unit.run_ids, unit.attempts, strict=True))
    with Registry(settings.registry_url) as reg:
        rows = reg.get_runs(unit.run_ids)
        left = [r["run_id"] for r in rows if r["attempt"] == planned[r["run_id"]] and r["status"] in UNFINISHED]
        if not left:
            release(path)
            return Recovery(pid, unit.unit_id, unit.sweep_id, 0, "finished")
        if len(deaths) >= MAX_WORKER_DEATHS:
            again = f"`gamma-lab rerun {unit.sweep_id}`" if unit.sweep_id else "`gamma-lab rerun RUN`"
            pids = ", ".join(str(d.get("pid")) for d in deaths)
            reason = (
                f"its local worker died {len(deaths)} times while training it (pids {pids}: killed, or out of "
                f"memory?); not retried again: {again} trains it again"
            )
            reg.mark_lost_runs({rid: planned[rid] for rid in left}, reason)
            release(path)
            log.error("unit %s: %s", unit.unit_id, reason)
            return Recovery(pid, unit.unit_id, unit.sweep_id, len(left), "lost", f"marked lost ({again} tries again)")
        new = reg.reset_for_rerun(left)  # the sweeps that launched this attempt keep it
    configs = [c for c in unit.configs if c.run_id in new]
    attempts = [new[c.run_id] for c in configs]
    retry = WorkUnit(_unit_id(configs, attempts), configs, attempts, unit.device, unit.sweep_id)
    body = json.loads(retry.to_json())
    body["deaths"] = deaths
    pending = queue_dir(settings) / "pending"
    _write_pending(pending, f"{FRONT}-{retry.unit_id}.json", json.dumps(body, sort_keys=True))
    release(path)
    log.warning(
        "worker %d died training unit %s: %d run(s) queued again as unit %s",
        pid,
        unit.unit_id,
        len(configs),
        retry.unit_id,
    )
    return Recovery(pid, unit.unit_id, unit.sweep_id, len(configs), "requeued")


def _pending_runs(settings: Settings) -> int:
    n = 0
    for p in pending_units(settings):
        try:
            n += len(json.loads(p.read_text()).get("configs") or [])
        except (OSError, ValueError):
            continue
    return n


def _spawn(settings: Settings, n: int, env: dict[str, str] | None, count: int) -> list[subprocess.Popen[bytes]]:
    """Start `count` worker processes (of `n` configured: each gets cores // n torch threads)."""
    procs: list[subprocess.Popen[bytes]] = []
    threads = max(1, (os.cpu_count() or 1) // max(n, 1))  # split the cores across the workers
    child_env = dict(os.environ if env is None else env)
    child_env["GAMMA_LAB_DATA"] = str(settings.data_dir)
    child_env["GAMMA_LAB_WORKERS"] = str(n)  # the count a worker keeps when it looks for more work
    child_env.setdefault("GAMMA_LAB_TORCH_THREADS", str(threads))
    log_path = queue_dir(settings) / "workers.log"
    for _ in range(count):
        with open(log_path, "ab") as logfile:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tasks.local_worker"],
                env=child_env,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives the submitting command and its Ctrl-C
            )
        procs.append(proc)
    return procs


def _start_workers_locked(settings: Settings, n: int, env: dict[str, str] | None, *, warm: bool = False) -> list[int]:
    """Start workers until min(n, pending units) are alive (`warm`: n, work or not); the caller holds
    the lock. Returns the pids started."""
    alive = live_workers(settings)
    want = n if warm else min(n, len(pending_units(settings)) + len(alive))
    procs = _spawn(settings, n, env, max(0, want - len(alive)))
    # wait until each registered (or already exited), so that the next count, once the lock is
    # released, sees it
    deadline = time.time() + 30
    while procs and time.time() < deadline:
        live = set(live_workers(settings))
        if all(p.poll() is not None or p.pid in live for p in procs):
            break
        time.sleep(0.05)
    return [p.pid for p in procs]


def _supervise_locked(
    settings: Settings, result: Supervision, *, start: bool, n: int, env: dict[str, str] | None
) -> None:
    for path, pid in _dead_claims(settings):
        if _last_words_pending(settings, pid):
            result.deferred += 1
            continue
        try:
            result.recovered.append(_recover_one(settings, path, pid))
        except Exception as exc:  # noqa: BLE001 - e.g. the registry is busy: the claim stays, the next pass retries
            log.warning("could not recover the unit %s of dead worker %d: %s", path.name, pid, exc)
    if start:
        if not live_workers(settings):
            result.waiting_runs = _pending_runs(settings)
        result.started = _start_workers_locked(settings, n, env)
    result.live = len(live_workers(settings))
    if result.live == 0:
        result.pending_runs = _pending_runs(settings)


def supervise(
    settings: Settings, *, start: bool = True, n: int | None = None, env: dict[str, str] | None = None
) -> Supervision:
    """Recover dead workers' units, then (`start`) start workers for the work waiting. Never raises
    for a folder it cannot write or a registry it cannot reach: `Supervision.error` says why."""
    result = Supervision(log_path=queue_dir(settings) / "workers.log")
    if not queue_dir(settings).is_dir():
        return result  # never used: nothing to supervise (and nothing is created)
    if not os.access(queue_dir(settings), os.W_OK):  # a read-only data folder: look, write nothing
        result.error = "the data folder is read-only"
        with contextlib.suppress(OSError):
            result.live = len(live_workers(settings, prune=False))
            result.pending_runs = _pending_runs(settings) if result.live == 0 else 0
        return result
    n = n or settings.workers
    try:
        with QueueLock(settings):
            _supervise_locked(settings, result, start=start, n=n, env=env)
    except Exception as exc:  # noqa: BLE001 - supervision is best effort; the caller shows the reason
        result.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, OSError) else str(exc)
        log.debug("cannot supervise the local workers: %s", result.error)
        with contextlib.suppress(OSError):
            result.live = len(live_workers(settings))
            result.pending_runs = _pending_runs(settings) if result.live == 0 else 0
    return result


def ensure_workers(settings: Settings, *, n: int | None = None, env: dict[str, str] | None = None) -> list[int]:
    """Recover dead workers' units and start workers until min(n, pending units) are alive. Returns
    the PIDs started now.

    Units are written before this looks at the workers, and a worker re-checks the queue under the
    lock before it exits: between the two, no unit is ever left without a worker.
    """
    n = n or settings.workers
    result = Supervision()
    try:
        with QueueLock(settings):  # other errors reach the submitter
            _supervise_locked(settings, result, start=True, n=n, env=env)
    except QueueBusy as exc:  # the units are queued: the next supervision pass starts their worker
        log.warning("%s; workers were not started now", exc)
    return result.started


class Supervisor(threading.Thread):
    """`supervise` every `interval` seconds in a daemon thread (the dashboard runs one)."""

    def __init__(self, settings: Settings, interval: float | None = None):
        super().__init__(name="gamma-lab-supervisor", daemon=True)
        self.settings = settings
        self.interval = interval or max(1.0, float(getattr(settings, "heartbeat_s", 10)))
        self.stop_event = threading.Event()
        self.last: Supervision | None = None
        self.said: set[str] = set()

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.last = supervise(self.settings)
            for line in self.last.lines():
                if line not in self.said:  # a read-only folder says so once, not every few seconds
                    self.said.add(line)
                    log.warning("%s", line)

    def stop(self) -> None:
        self.stop_event.set()


def warm_up(settings: Settings, idle_s: float, parent: int | None = None) -> list[int]:
    """Start settings.workers workers now, before any work, that wait `idle_s` seconds for it and leave
    when process `parent` (default: this one) is gone. The warm settings go into this process's
    environment too, so the workers it starts later (and their replacements) are warm as well.
    Returns the pids started; [] when the queue is busy (the next launch starts them cold)."""
    os.environ[WARM_ENV] = f"{float(idle_s):g}"
    os.environ[PARENT_ENV] = str(parent or os.getpid())
    _dirs(settings)
    try:
        with QueueLock(settings):
            return _start_workers_locked(settings, settings.workers, None, warm=True)
    except QueueBusy as exc:
        log.warning("%s; workers were not warmed up", exc)
        return []


def start_early(settings: Settings, wait_s: float = EARLY_WAIT_S, parent: int | None = None) -> int | None:
    """Start one local worker now, before this process (`gamma-lab sweep`) has checked, planned and
    queued its units, so that the worker's start-up (interpreter, torch: over a second) runs
    meanwhile instead of after. It waits up to `wait_s` for its first unit while process `parent`
    (default: this one) lives, then works as any worker; when nothing is queued (a refused spec) it
    leaves. Registered here, at once, so that the launch's own count (ensure_workers) sees it.
    Returns its pid, or None when a worker is alive already (it takes the work) or the queue is busy
    (the launch starts one later)."""
    env = {**os.environ, EARLY_ENV: f"{float(wait_s):g}", PARENT_ENV: str(parent or os.getpid())}
    try:
        _dirs(settings)
        with QueueLock(settings, timeout_s=1.0):
            if live_workers(settings):
                return None
            proc = _spawn(settings, settings.workers, env, 1)[0]
            register_pid(settings, proc.pid)  # Popen returned after the exec: /proc names the worker
            return proc.pid
    except (QueueBusy, OSError) as exc:
        log.debug("no early local worker: %s", exc)
        return None


def early_settings() -> tuple[float, int | None]:
    """(seconds to wait for the first unit, the launcher's pid) of an early worker; (0, None) otherwise."""
    wait_s = _env_seconds(EARLY_ENV)
    return wait_s, _parent_pid() if wait_s > 0 else None


def _env_seconds(name: str) -> float:
    try:
        return max(0.0, float(os.environ.get(name) or 0))
    except ValueError:
        return 0.0


def _parent_pid() -> int | None:
    parent = os.environ.get(PARENT_ENV, "")
    return int(parent) if parent.isdigit() else None


def warm_settings() -> tuple[float, int | None]:
    """(idle seconds, parent pid) of this worker process from its environment; (0, None) when cold."""
    return _env_seconds(WARM_ENV), _parent_pid()


def warm_workers(settings: Settings) -> int:
    """Live local workers waiting warm for this process (it warmed them up: `gamma-lab serve`), else 0."""
    idle_s, _ = warm_settings()
    if idle_s <= 0 or not getattr(settings, "embedded", True) or not queue_dir(settings).is_dir():
        return 0
    with contextlib.suppress(OSError):
        return len(live_workers(settings, prune=False))
    return 0


def wait_for_work(settings: Settings, idle_s: float, parent: int | None, poll_s: float = WARM_POLL_S) -> bool:
    """A warm worker with nothing to do: wait until a unit is pending (True), or until `idle_s` passed
    or the parent process is gone (False: leave)."""
    deadline = time.monotonic() + idle_s
    while time.monotonic() < deadline:
        if parent is not None and not pid_alive(parent):
            return False
        if pending_units(settings):
            return True
        time.sleep(poll_s)
    return False


@contextlib.contextmanager
def worker_exit_check(settings: Settings, registration: Path, n: int, *, keep: bool = True) -> Iterator[bool]:
    """For a worker that found the queue empty: deregister under the lock and yield whether it should
    stay (work arrived and fewer than `n` workers are alive: it registers again). When it goes, the
    lock is kept until its process exits, so a launch cannot count it gone while it still runs."""
    lock = QueueLock(settings)
    lock.__enter__()
    try:
        release(registration)
        stay = bool(pending_units(settings)) and len(live_workers(settings)) < n
        if stay:
            register(settings)
        yield stay
        if not stay and keep:
            lock.keep_until_exit()
    finally:
        lock.__exit__()
