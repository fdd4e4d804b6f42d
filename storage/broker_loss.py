"""What the recorder does when the event bus lost data: a run is never `done` with a gap, and a run
whose queued unit the broker lost does not sit `queued` for ever.

A Redis restarted without persistence (or flushed) loses three things at once: events not yet
recorded, the Celery messages of units still queued, and the message of the unit being trained.
- The worker training a unit rides out the outage (storage.bus.RedisPublisher retries) and publishes
  its `finished` event with `batches`, the number of points events the attempt sent; the recorder
  compares it with the batches the store ingested for (run, attempt) (`ingested_batches`) and records
  `failed`, naming the gap and `gamma-lab rerun SWEEP`, instead of `done`.
- The recorder's consumer notices the stream is gone (NOGROUP, storage.bus.RedisConsumer), creates it
  again and counts a reset; the recorder then calls `settle_lost_queue`: the `queued` runs of Celery
  sweeps that no message in the broker names any more (queues and kombu's unacknowledged hash; each
  task carries its run ids in the `gamma_lab_runs` header, tasks.executors) are recorded `failed` with
  the reason and `gamma-lab rerun SWEEP`.
"""

from __future__ import annotations

import logging
from typing import Any

from storage.registry import FinishedEvent, Registry

log = logging.getLogger(__name__)


def ingested_batches(store: Any, run_id: str, attempt: int) -> int:
    """How many points batches of (run, attempt) the metric store holds (its `ingested` table)."""
    key = store.run_keys([run_id]).get(run_id)
    if key is None:
        return 0
    with store.reader() as cur:
        rows = cur.execute("SELECT count(*) FROM ingested WHERE run_key = ? AND attempt = ?", [key, attempt]).fetchall()
    return int(rows[0][0])


def settle_lost_queue(registry: Registry, consumer: Any) -> list[str]:
    """After the broker lost its stream: record `failed` (with the reason) for the queued runs of
    Celery sweeps whose unit no broker message names. Returns their run ids.

    A unit queued in the instant between storing its runs and sending its message could be named here
    too; its worker's `finished` event still records the result when it trains it."""
    texts = getattr(consumer, "queued_task_texts", None)
    if texts is None:  # the spool: nothing is held elsewhere
        return []
    try:
        held = "\n".join(texts())
    except Exception as exc:  # noqa: BLE001 - the broker went away again: the next reset settles it
        log.warning("cannot read the broker's queues after it lost its stream: %s", exc)
        return []
    events, per_sweep = [], {}
    for sweep in registry.list_sweeps():
        if sweep.get("executor") != "celery" or sweep.get("status") not in ("queued", "running"):
            continue
        for run in registry.list_runs(sweep["id"]):
            if run["status"] != "queued" or run["run_id"] in held:
                continue
            per_sweep[sweep["id"]] = per_sweep.get(sweep["id"], 0) + 1
            events.append(
                FinishedEvent(
                    run["run_id"],
                    run["attempt"],
                    "failed",
                    error=(
                        "the event broker restarted without persistence (or was flushed) and lost this run's "
                        f"queued unit; run `gamma-lab rerun {sweep['id']}` to queue it again"
                    ),
                )
            )
    if events:
        registry.apply_events(finished=list({e.run_id: e for e in events}.values()))
        log.warning(
            "the broker lost the queued units of %s: those runs are marked failed (`gamma-lab rerun SWEEP`)",
            ", ".join(f"{n} run(s) of sweep {sid}" for sid, n in sorted(per_sweep.items())),
        )
    return [e.run_id for e in events]
