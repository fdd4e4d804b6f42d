"""Cooperative cancel flags that a worker can reach with what it has.

A GPU worker on a lab machine may only reach the broker, so in Celery mode the flags are Redis keys
(`gamma-lab:cancel:<run_id>`, expiring after a week so stale flags do not pile up); in embedded mode
they are empty files in `<data_dir>/cancel/`. The registry's `cancel_requested` column is set too
(tasks.api), which is what the dashboard shows; these flags are what the training loop polls at
every flush — one `EXISTS` round trip or a few `stat` calls, cheap next to a flush.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from storage.settings import Settings

FLAG_TTL_S = 7 * 24 * 3600
KEY_PREFIX = "gamma-lab:cancel:"


def _flag_dir(settings: Settings) -> Path:
    return Path(settings.data_dir) / "cancel"


def _redis(broker_url: str) -> Any:
    import redis

    return redis.Redis.from_url(broker_url, socket_timeout=10, socket_connect_timeout=10)


def _safe(run_id: str) -> str:
    # run ids are hex content hashes; refuse anything that could walk out of the flag folder
    if not run_id or not all(c.isalnum() or c in "-_" for c in run_id):
        raise ValueError(f"run_id: must be letters, digits, - or _ (got {run_id!r})")
    return run_id


def request(settings: Settings, run_ids: Iterable[str]) -> int:
    """Raise the cancel flag of each run. Returns how many flags were set."""
    ids = [_safe(r) for r in run_ids]
    if not ids:
        return 0
    if settings.broker_url:
        client = _redis(settings.broker_url)
        with client.pipeline() as pipe:
            for rid in ids:
                pipe.set(KEY_PREFIX + rid, b"1", ex=FLAG_TTL_S)
            pipe.execute()
    else:
        folder = _flag_dir(settings)
        folder.mkdir(parents=True, exist_ok=True)
        for rid in ids:
            (folder / rid).touch()
    return len(ids)


def clear(settings: Settings, run_ids: Iterable[str]) -> None:
    """Lower the flags (before a rerun: a new attempt must not stop at once)."""
    ids = [_safe(r) for r in run_ids]
    if not ids:
        return
    if settings.broker_url:
        _redis(settings.broker_url).delete(*[KEY_PREFIX + r for r in ids])
    else:
        folder = _flag_dir(settings)
        for rid in ids:
            try:
                os.unlink(folder / rid)
            except FileNotFoundError:
                pass


class CancelChecker:
    """Polled by the worker at every flush: which of its runs have been asked to stop."""

    def __init__(self, settings: Settings, run_ids: Sequence[str]):
        self.run_ids = [_safe(r) for r in run_ids]
        self._redis = _redis(settings.broker_url) if settings.broker_url else None
        self._folder = _flag_dir(settings)

    def cancelled(self) -> set[str]:
        if self._redis is not None:
            values = self._redis.mget([KEY_PREFIX + r for r in self.run_ids])
            return {r for r, v in zip(self.run_ids, values, strict=True) if v is not None}
        return {r for r in self.run_ids if (self._folder / r).exists()}
