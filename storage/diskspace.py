"""A full data folder: recognising "no space left on device", saying it in one line, and a reserve.

Every process of the lab writes into the data folder (workers: spool events; the recorder: DuckDB
and its WAL; everyone: the SQLite registry and its WAL; workers: their log). When it fills up,
the runs must still end in a final state with the reason, and the worker must still be able to say
so in its log -- both small writes on a disk with no space left. Two measures keep room for them:

- a low-water mark: the bulk writers (the spool publisher, the recorder's ingest) treat the folder
  as full once less than `LOW_WATER_BYTES` is free (below_low_water), so they stop before the last
  megabyte, which stays for the registry's final states and the log lines;
- a reserve file (`RESERVE_NAME`, `RESERVE_BYTES` of real blocks), for when something else filled
  the disk to the last byte: the first process that meets the full disk deletes it (release_reserve).
  The recorder makes it again (ensure_reserve) once there is room (`has_room`: more than the
  low-water mark, so recording does not flap at the edge), before recording resumes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

RESERVE_NAME = ".gamma-lab-space-reserve"
RESERVE_BYTES = 512 * 1024
LOW_WATER_BYTES = 2 * RESERVE_BYTES
_FULL_WORDS = ("no space left on device", "database or disk is full", "disk quota exceeded")


class DiskFull(OSError):
    """The data folder's disk is full; the message is the one line a user sees."""

    def __init__(self, folder: Path | str, what: str = "SWEEP"):
        self.folder = Path(folder)
        super().__init__(errno.ENOSPC, disk_full_message(folder, what))

    def __str__(self) -> str:
        return str(self.strerror)


def disk_full_message(folder: Path | str, what: str = "SWEEP") -> str:
    return f"no space left on device in {folder}: free space, then `gamma-lab rerun {what}`"


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT from the OS, or the same reported by DuckDB or SQLite (as text), anywhere in the
    exception's chain (DuckDB's 'cannot rollback' hides the commit's ENOSPC in __context__)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, DiskFull):
            return True
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(w in str(e).lower() for w in _FULL_WORDS):
            return True
        e = e.__cause__ or e.__context__
    return False


def reserve_path(data_dir: Path | str) -> Path:
    return Path(data_dir) / RESERVE_NAME


def release_reserve(data_dir: Path | str) -> bool:
    """Delete the reserve (room for the final states and the log line). True if it was there."""
    try:
        reserve_path(data_dir).unlink()
    except OSError:
        return False
    return True


def free_bytes(data_dir: Path | str) -> int:
    try:
        return shutil.disk_usage(data_dir).free
    except OSError:
        return 0


def below_low_water(data_dir: Path | str) -> bool:
    """The bulk writers stop here: what is left is for final states and log lines (a statvfs, ~µs)."""
    return free_bytes(data_dir) < LOW_WATER_BYTES


def has_room(data_dir: Path | str) -> bool:
    """Room to record again: the reserve back, the low-water mark, and as much again to write into."""
    return free_bytes(data_dir) >= RESERVE_BYTES + 2 * LOW_WATER_BYTES


def ensure_reserve(data_dir: Path | str) -> bool:
    """Make the reserve file when it is missing and there is room for it (never fills a disk to make
    it). Best effort: a read-only or full folder gets none. True when the reserve exists afterwards."""
    path = reserve_path(data_dir)
    try:
        if path.stat().st_size >= RESERVE_BYTES:
            return True
    except OSError:
        pass
    if not has_room(data_dir):
        return False
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(b"\0" * RESERVE_BYTES)  # real blocks, not a sparse file (which would reserve nothing)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False
    return True
