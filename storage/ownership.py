"""Who records: the ownership of the DuckDB metric file and its hand-over protocol.

Ownership is an advisory flock on `<metrics>.recorder.lock` (flock locks conflict between two opens
even in one process), with "<pid> <role>" written inside so a loser can say who records. A dashboard
that wants to record while a `gamma-lab` command or the standalone recorder does writes a hand-over
request beside it ("<pid> <unix time>"); a recorder of another role yields when it sees a fresh one
from a live process. storage.recorder re-exports every name here.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path

from storage.settings import Settings


class RecorderBusy(RuntimeError):
    """Another recorder holds the metrics file."""


ROLES = ("dashboard", "cli", "recorder")
_ROLE_WORDS = {
    "dashboard": "another dashboard",
    "cli": "a `gamma-lab` command recording while it waits (`sweep --wait`, `demo`, `status`, `export`)",
    "recorder": "the standalone `gamma-lab recorder`",
}


def lock_path(settings: Settings) -> Path:
    """The owner lock of the metric store: flocked by the recorder, "<pid> <role>" inside."""
    return Path(str(settings.metrics_path) + ".recorder.lock")


@dataclass(frozen=True)
class Owner:
    """What the owner lock file says about the process that records (it may have stopped since)."""

    pid: int | None
    role: str | None

    def describe(self) -> str:
        what = _ROLE_WORDS.get(self.role or "", "another process")
        return f"{what} (pid {self.pid if self.pid is not None else 'unknown'})"


def read_owner(settings: Settings) -> Owner:
    """Parse the owner lock file ("<pid> <role>"; older files hold the pid alone)."""
    try:
        words = lock_path(settings).read_text().split()
    except OSError:
        words = []
    pid = int(words[0]) if words and words[0].isdigit() else None
    role = words[1] if len(words) > 1 and words[1] in ROLES else None
    return Owner(pid, role)


HANDOVER_FRESH_S = 30.0  # a hand-over request older than this is ignored (its dashboard did not follow up)


def request_path(settings: Settings) -> Path:
    """A dashboard's request that a yielding recorder hand recording over: "<pid> <unix time>"."""
    return Path(str(settings.metrics_path) + ".recorder.handover")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs: a zombie (exited, its parent has not reaped it yet: the process
    that started a worker may be that parent) counts as dead; another user's process as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:  # no /proc: being there has to do
        return True


def request_handover(settings: Settings) -> None:
    """Ask the recorder of another role than "dashboard" to yield (atomic: written aside, renamed)."""
    path = request_path(settings)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{os.getpid()} {time.time():.3f}\n")
    os.replace(tmp, path)


def pending_request(settings: Settings, now: float | None = None) -> int | None:
    """The pid of a fresh hand-over request from another live process, else None. Cheap when there
    is none (one failed open)."""
    try:
        words = request_path(settings).read_text().split()
        pid, at = int(words[0]), float(words[1])
    except (OSError, ValueError, IndexError):
        return None
    now = time.time() if now is None else now
    if pid == os.getpid() or not (-5.0 <= now - at <= HANDOVER_FRESH_S) or not pid_alive(pid):
        return None
    return pid


class OwnerLock:
    """Advisory exclusive flock with the owner's pid and role written inside (for the loser's message)."""

    def __init__(self, path: Path, role: str = "cli"):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            try:
                pid = path.read_text().split()[0]
            except (OSError, IndexError):
                pid = "unknown"
            raise RecorderBusy(
                f"a recorder is already running (pid {pid}) and owns {str(path).removesuffix('.recorder.lock')}; "
                "this process will only publish events"
            ) from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()} {role}\n".encode())

    def release(self) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1
