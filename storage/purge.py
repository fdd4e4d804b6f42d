"""Count and delete purged runs' metric points, also while another process records.

The DuckDB file has one writer, the recorder (storage.recorder), so a purge never opens it for writing
beside it: it publishes a `purge` event (`{"type": "purge", "request_id", "run_ids", "path",
"dry_run"}`, path relative to the data folder) and the recorder, after ingesting every event published
before it (a cancelled run's last points included), deletes those runs' points, summaries, ingested
marks and run keys in one transaction (MetricStore.delete_runs) and answers `{"points": n}` in the
file at `path`. When no recorder runs, this process records for a moment itself (the purge event and
whatever waits before it). A dry run counts instead of deleting: the confirmation says how many points
go.

The event is durable on the bus: a recorder that answers too late, or starts only later, still deletes
the points; the caller is told that the deletion is not confirmed (None).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from storage.bus import open_publisher
from storage.export import _write_text_atomic
from storage.metric_store import MetricStore, StoreCorrupt, StoreLocked, open_reader
from storage.settings import Settings

PURGE_DIR = "purges"  # inside the data folder: where the recorder answers purge requests


class PurgeError(RuntimeError):
    """The recorder could not count or delete the points (its answer says why)."""


def count_points(settings: Settings, run_ids: Sequence[str], *, timeout_s: float = 30.0) -> int | None:
    """Points of these runs (every attempt): read here when this process can open the store, else
    asked of the recorder that holds it. None when that recorder did not answer within `timeout_s`."""
    if not run_ids:
        return 0
    try:
        store, owned = open_reader(settings.metrics_path)
    except StoreLocked:
        return _ask_recorder(settings, run_ids, dry_run=True, timeout_s=timeout_s)
    if store is None:
        return 0
    try:
        return store.count_runs_points(run_ids)
    finally:
        if owned:
            store.close()


def delete_points(settings: Settings, run_ids: Sequence[str], *, timeout_s: float = 120.0) -> int | None:
    """Delete every point of these runs (runs the registry no longer holds) through the recorder.
    Returns the points deleted, or None when no recorder answered within `timeout_s` (the request
    stays on the bus: the next recorder deletes them)."""
    if not run_ids:
        return 0
    return _ask_recorder(settings, run_ids, dry_run=False, timeout_s=timeout_s)


def _ask_recorder(settings: Settings, run_ids: Sequence[str], *, dry_run: bool, timeout_s: float) -> int | None:
    request_id = uuid.uuid4().hex
    rel = f"{PURGE_DIR}/{request_id}.json"
    answer = settings.resolve_data_path(rel)
    event = {"type": "purge", "request_id": request_id, "run_ids": list(run_ids), "path": rel, "dry_run": dry_run}
    with open_publisher(settings) as pub:
        pub.publish(event)
    _record_here(settings)
    deadline = time.monotonic() + timeout_s
    while True:
        if answer.exists():
            reply = json.loads(answer.read_text())
            answer.unlink(missing_ok=True)
            if "error" in reply:
                verb = "count" if dry_run else "delete"
                raise PurgeError(f"the recorder could not {verb} the points: {reply['error']}")
            return int(reply["points"])
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def _record_here(settings: Settings) -> None:
    """When nobody records, record what waits on the bus (the request included), then let go."""
    from storage.recorder import Recorder, RecorderBusy

    try:
        recorder = Recorder(settings)
    except RecorderBusy:
        return  # the recorder that holds the store answers
    try:
        recorder.drain()
    finally:
        recorder.close()


def answer_request(settings: Settings, store: MetricStore, event: dict[str, Any]) -> None:
    """The recorder's side: count or delete the points a `purge` event names and write the answer
    (`{"error": ...}` when that failed: a request that fails again and again must not stop recording).
    Raises SettingsError (a ValueError) for a path outside the data folder: that event is set aside;
    and StoreCorrupt or DiskFull: the recorder pauses, the request waits on the bus."""
    from storage.diskspace import DiskFull

    dest = settings.resolve_data_path(event["path"])
    ids = event["run_ids"]
    reply: dict[str, Any]
    try:
        reply = {"points": store.count_runs_points(ids) if event.get("dry_run") else store.delete_runs(ids)}
    except (StoreCorrupt, DiskFull):
        raise
    except Exception as exc:  # noqa: BLE001 - the requester hears why; the recorder goes on
        reply = {"error": f"{type(exc).__name__}: {exc}"}
    dest.parent.mkdir(parents=True, exist_ok=True)
    _write_text_atomic(dest, json.dumps(reply) + "\n")
