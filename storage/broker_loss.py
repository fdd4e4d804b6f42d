"""What the recorder does when the event bus lost data: a run is never `done` with a gap, and a run
whose queued unit the broker lost does not sit `queued` for ever.

A Redis restarted without persistence (or flushed) loses three things at once: events not yet
recorded, the Celery messages of units still queued, and the message of the unit being trained.
- The worker training a unit rides out the outage (storage.bus.RedisPublisher retries) and publishes
  its `finished` event with `batches`, the number of points events the attempt sent; the recorder
  compares it with the batches the store ingested for (run, attempt) (`ingested_batches`) and records
  `failed`, naming the gap and `gamma-lab rerun SWEEP`, instead of `done`.
- The recorder's consumer notices the stream is gone (NOGROUP, storage.bus.RedisConsumer), creates it
  again and counts a reset; the recorder's `LostQueue` then notes the `queued` runs of Celery sweeps and,
  a few seconds later (a submit under way finishes sending its messages), marks `lost`, with the reason
  and `gamma-lab rerun SWEEP`, those still queued that no message in the broker names (queues and
  kombu's unacknowledged hash; each task carries its run ids in the `gamma_lab_runs` header,
  tasks.executors).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from storage.registry import Registry

log = logging.getLogger(__name__)


def ingested_batches(store: Any, run_id: str, attempt: int) -> int:
    """How many points batches of (run, attempt) the metric store holds (its `ingested` table)."""
    key = store.run_keys([run_id]).get(run_id)
    if key is None:
        return 0
    with store.reader() as cur:
        rows = cur.execute("SELECT count(*) FROM ingested WHERE run_key = ? AND attempt = ?", [key, attempt]).fetchall()
    return int(rows[0][0])


class LostQueue:
    """Settles what a broker that lost its data took with it, without racing a submit.

    The recorder calls `step(registry, consumer)` after every read. When the consumer's `stream_resets`
    moved, the queued runs of Celery sweeps are noted; `GRACE_S` later, those still queued at the same
    attempt whose unit no broker message names are marked `lost` with the reason. The grace lets a
    submit that had stored its runs but not yet sent their message finish sending it; meanwhile the
    recorder records on (a unit a worker took in between shows running)."""

    GRACE_S = 3.0

    def __init__(self) -> None:
        self.resets = 0
        self.noted: dict[str, tuple[int, str]] | None = None  # run_id -> (attempt, sweep_id)
        self.due = 0.0

    @property
    def pending(self) -> bool:
        """Runs are noted and not settled yet (Recorder.drain waits for them: `gamma-lab status`)."""
        return self.noted is not None

    def step(self, registry: Registry, consumer: Any) -> list[str]:
        resets = getattr(consumer, "stream_resets", 0)
        if resets != self.resets:
            self.resets = resets
            self.noted = queued_celery_runs(registry) or None
            self.due = time.monotonic() + self.GRACE_S
        if self.noted is None or time.monotonic() < self.due:
            return []
        noted, self.noted = self.noted, None
        return settle_lost_queue(registry, consumer, noted) if noted else []


def queued_celery_runs(registry: Registry) -> dict[str, tuple[int, str]]:
    """run_id -> (attempt, sweep_id) of the queued runs of Celery sweeps (archived ones too: hidden
    from lists, their queued work is still the broker's)."""
    out: dict[str, tuple[int, str]] = {}
    for sweep in registry.list_sweeps(archived=None):
        if sweep.get("executor") != "celery" or sweep.get("status") not in ("queued", "running"):
            continue
        for run in registry.list_runs(sweep["id"]):
            if run["status"] == "queued":
                out[run["run_id"]] = (int(run["attempt"]), sweep["id"])
    return out


def settle_lost_queue(registry: Registry, consumer: Any, noted: dict[str, tuple[int, str]]) -> list[str]:
    """Mark `lost` (with the reason) the `noted` runs still queued at the same attempt whose unit no
    broker message names (Registry.mark_lost_runs). Returns their run ids.

    A unit a worker took between the note and now, before its `started` event was recorded, could be
    named here too; that event (lost -> running) and its `finished` one still record it."""
    texts = getattr(consumer, "queued_task_texts", None)
    if texts is None:  # the spool: nothing is held elsewhere
        return []
    try:
        held = "\n".join(texts())
    except Exception as exc:  # noqa: BLE001 - the broker went away again: the next reset settles it
        log.warning("cannot read the broker's queues after it lost its stream: %s", exc)
        return []
    now = {r["run_id"]: r for r in registry.get_runs(list(noted))}
    per_sweep: dict[str, dict[str, int]] = {}  # sweep -> {run_id: attempt}
    for run_id, (attempt, sweep_id) in noted.items():
        run = now.get(run_id)
        if run is None or run["status"] != "queued" or int(run["attempt"]) != attempt or run_id in held:
            continue
        per_sweep.setdefault(sweep_id, {})[run_id] = attempt
    lost: list[str] = []
    for sweep_id, attempts in sorted(per_sweep.items()):
        reason = (
            "the event broker restarted without persistence (or was flushed) and lost this run's queued unit; "
            f"run `gamma-lab rerun {sweep_id}` to queue it again"
        )
        lost += registry.mark_lost_runs(attempts, reason)
    if lost:
        log.warning(
            "the broker lost the queued units of %s: those runs are marked lost (`gamma-lab rerun SWEEP`)",
            ", ".join(f"{len(a)} run(s) of sweep {sid}" for sid, a in sorted(per_sweep.items())),
        )
    return lost
