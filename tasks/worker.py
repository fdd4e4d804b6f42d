"""Run one work unit: train its configs as one ensemble and publish everything as bus events.

The same function runs inside a local worker process (tasks.local_worker) and inside a Celery task
(tasks.celery_app). It never touches DuckDB: events go to storage's bus, the recorder stores them.

Events (docs/contracts.md): `started` per run; `points` per run per flush, numbered by `seq` from 0
within (run, attempt) so a replayed event is stored once; `heartbeat` every settings.heartbeat_s from
a background thread (so a long eval step does not look like a dead worker); `finished` per run with
status, summary and error. A failing unit publishes `failed` with the error text for every run it
had not finished, then returns (the executor moves on to the next unit).

Out of memory (torch.OutOfMemoryError, the CPU allocator's error, or engine.memory.UnitTooBig: the
estimate above this worker's budget, checked before anything is allocated) is not a failure: the
runs not finished yet are split in halves, trained one half after the other in this process, and
each split is noted on its runs ("split after out of memory: 8 → 4 + 4", the error column of the Runs
page). In-process, so the unit's queue entry (the local queue's claimed file, Celery's unacknowledged
message) stays the whole unit at its attempts: a worker that dies meanwhile leaves its unfinished
runs to the usual recovery. A half retried after it had sent points keeps its attempt and sends only
the points batches it had not sent (same seeds, same batches, same flushes: the first try's points
stand). One member that still does not fit ends `failed`, naming the estimate, the budget and the
setting to raise.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

from engine import memory
from engine.config import RunConfig
from storage import run_arrays
from storage.bus import BrokerUnavailable, SpoolPublisher
from storage.diskspace import DiskFull, disk_full_message, release_reserve
from storage.events import FinishedEvent
from storage.settings import Settings
from tasks.cancel import CancelChecker
from tasks.planner import WorkUnit, memory_budget, record_unit

log = logging.getLogger("gamma_lab.worker")
FLUSH_EVERY = 50


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def set_torch_threads(threads: int | None) -> None:
    """Give this process its share of the cores (N local workers each get cores // N)."""
    import torch

    n = threads or int(os.environ.get("GAMMA_LAB_TORCH_THREADS", "0") or 0)
    if n > 0:
        torch.set_num_threads(n)


class _Heartbeat(threading.Thread):
    """Publishes a heartbeat for the unit's unfinished runs every `interval` seconds."""

    def __init__(self, publish: Callable[[dict[str, Any]], None], attempts: dict[str, int], interval: float):
        super().__init__(name="gamma-lab-heartbeat", daemon=True)
        self.publish = publish
        self.attempts = attempts  # run_id -> attempt, shrinks as runs finish
        self.interval = interval
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.worker = worker_name()

    def finish(self, run_id: str) -> None:
        with self.lock:
            self.attempts.pop(run_id, None)

    def beat(self) -> None:
        with self.lock:
            by_attempt: dict[int, list[str]] = {}
            for rid, att in self.attempts.items():
                by_attempt.setdefault(att, []).append(rid)
        for att, rids in by_attempt.items():  # the event carries one attempt: one event per value
            try:
                self.publish({"type": "heartbeat", "run_ids": rids, "attempt": att, "worker": self.worker,
                              "time": time.time()})
            except (BrokerUnavailable, DiskFull):  # said in one line by the unit; the next beat tries again
                pass
            except Exception:  # a bus hiccup must not kill training; the next beat retries
                log.exception("heartbeat publish failed")

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.beat()

    def stop(self) -> None:
        self.stop_event.set()


class _InOrder:
    """Publishes through `inner` from one writer thread, in the order published, all that waits at
    once (publish_many: the spool fsyncs those side by side). The spool's fsync of each event (3 ms
    on ext4; 216 events in bench/end_to_end.py's 36-cell unit, 0.66 s) no longer stalls training,
    and a flush's 36 events cost about one journal commit. run_unit flushes it before it returns, so
    every event of a unit is in the spool before the unit's queue entry is released (a worker killed
    later loses nothing). The writer's first error (DiskFull, say) is raised by every later publish
    and by flush; the events after it are dropped, as a synchronous publisher's caller would never
    have sent them."""

    def __init__(self, inner: Any):
        self._publish = _publish_fn(inner)
        self._publish_many = getattr(inner, "publish_many", None) or (lambda events: [*map(self._publish, events)])
        self._cond = threading.Condition()
        self._queue: deque[dict[str, Any]] = deque()
        self._busy = False
        self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write, name="gamma-lab-publisher", daemon=True)
        self._thread.start()

    def publish(self, event: dict[str, Any]) -> None:
        with self._cond:
            if self._closed:  # a late heartbeat after the unit: written at once, as before
                self._publish(event)
                return
            if self._error is not None:
                raise self._error
            self._queue.append(event)
            self._cond.notify_all()

    def _write(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = list(self._queue)
                self._queue.clear()
                self._busy = True
            try:
                self._publish_many(batch)
            except BaseException as exc:  # noqa: BLE001 - raised in the publishing thread
                with self._cond:
                    self._error = exc
                    self._queue.clear()
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def flush(self) -> None:
        """Wait until every event published so far is written; raise the writer's error, if any."""
        with self._cond:
            while (self._queue or self._busy) and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise self._error

    def close(self) -> None:
        """Write what is queued (unless the writer failed), then stop the thread. Never raises."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()


def _publish_fn(publisher: Any) -> Callable[[dict[str, Any]], None]:
    for name in ("publish", "send", "__call__"):
        fn = getattr(publisher, name, None)
        if callable(fn):
            return fn
    raise TypeError("publisher: needs a publish(event) method")


def _redelivered_attempts(settings: Settings, unit: WorkUnit) -> dict[str, int]:
    """A redelivered unit (its first execution died) trains as a NEW attempt, so no point is
    duplicated. Runs that ended meanwhile, or were rerun (their attempt moved on), are skipped:
    the returned dict holds only the runs to train, run_id -> new attempt."""
    from storage.registry import Registry

    planned = dict(zip(unit.run_ids, unit.attempts, strict=True))
    with Registry(settings.registry_url) as reg:
        rows = reg.get_runs(unit.run_ids)
        again = [r["run_id"] for r in rows
                 if r["attempt"] == planned[r["run_id"]] and r["status"] in ("queued", "running", "lost")]
        return reg.reset_for_rerun(again) if again else {}


def _report_failed(finish: Callable[..., None], configs: list[RunConfig], finished: dict[str, Any], error: str) -> None:
    """Publish `failed` for the unit's unfinished runs; when the bus cannot take it either, one line
    (no traceback): the recorder marks those runs lost once their heartbeats stop."""
    try:
        for c in configs:
            if c.run_id not in finished:
                finish(c.run_id, "failed", error=error)
    except BrokerUnavailable as exc:
        log.error("cannot report the failure (%s): the runs will be marked lost", exc)


def run_unit(
    unit_json: str,
    settings: Settings,
    publisher: Any,
    *,
    device: str | None = None,
    redelivered: bool = False,
    flush_every: int = FLUSH_EVERY,
) -> list[dict[str, Any]]:
    """Train one unit and publish its events. Returns one finished-event dict per run.

    `device` overrides the unit's (a Celery worker pinned to a GPU runs on "cuda").
    `redelivered`: this unit already started once elsewhere (broker redelivery) — train new attempts.
    A full data folder (the spool cannot take an event) stops the unit: see _stop_on_full_disk.
    """
    # the spool (embedded mode) is written from a thread, in order, while the unit trains (_InOrder)
    in_order = _InOrder(publisher) if isinstance(publisher, SpoolPublisher) else None
    try:
        out = _run_unit(unit_json, settings, in_order or publisher, device=device, redelivered=redelivered,
                        flush_every=flush_every)
        if in_order is not None:
            in_order.flush()
        return out
    except DiskFull:
        return _stop_on_full_disk(unit_json, settings)
    finally:
        if in_order is not None:
            in_order.close()


def _stop_on_full_disk(unit_json: str, settings: Settings) -> list[dict[str, Any]]:
    """The bus (the spool, in the full data folder) cannot take the unit's events, `failed` ones
    included: release the space reserve (storage.diskspace), write `failed` with the reason straight
    into the registry for the unit's runs still active, and say so in ONE log line (the worker goes
    on with the next unit). Their points already published wait in the spool and are recorded once
    there is room; `gamma-lab rerun SWEEP` trains them again as a new attempt."""
    from storage.registry import Registry

    unit = WorkUnit.from_json(unit_json)
    release_reserve(settings.data_dir)
    reason = disk_full_message(settings.data_dir, unit.sweep_id or "SWEEP")
    planned = dict(zip(unit.run_ids, unit.attempts, strict=True))
    try:
        with Registry(settings.registry_url) as reg:
            events = [FinishedEvent(r["run_id"], r["attempt"], "failed", error=reason)
                      for r in reg.get_runs(unit.run_ids)
                      if r["attempt"] >= planned[r["run_id"]] and r["status"] in ("queued", "running", "lost")]
            applied = reg.finish_many(events) if events else []
    except Exception as exc:  # noqa: BLE001 - the registry may be on the full disk too: one line, no traceback
        log.error("unit %s stopped: %s (its runs could not be marked failed either: %s; they end lost once "
                  "their heartbeats stop)", unit.unit_id, reason, str(exc).strip().splitlines()[0])
        return []
    log.error("unit %s stopped, %d run(s) marked failed: %s", unit.unit_id, len(applied), reason)
    return [{"type": "finished", "run_id": e.run_id, "attempt": e.attempt, "status": "failed", "error": reason}
            for e in events if e.run_id in applied]


def _run_unit(unit_json: str, settings: Settings, publisher: Any, *, device: str | None, redelivered: bool,
              flush_every: int) -> list[dict[str, Any]]:
    from engine.trainer import train_ensemble

    publish = _publish_fn(publisher)
    unit = WorkUnit.from_json(unit_json)
    attempt_of = dict(zip(unit.run_ids, unit.attempts, strict=True))
    if redelivered:
        attempt_of = _redelivered_attempts(settings, unit)
        unit = WorkUnit(unit.unit_id, [c for c in unit.configs if c.run_id in attempt_of],
                        [attempt_of[r] for r in unit.run_ids if r in attempt_of], unit.device, unit.sweep_id)
        if not unit.configs:
            return []
    me = worker_name()
    finished: dict[str, dict[str, Any]] = {}

    seq: dict[str, int] = {}  # run_id -> points events published so far (the next seq)
    sent: dict[str, int] = {}  # run_id -> points events a try that ran out of memory had published
    notes: dict[str, list[str]] = {}  # run_id -> "split after out of memory: 8 → 4 + 4", for the Runs page

    def finish(run_id: str, status: str, steps_done: int = 0, diverged_step: int | None = None,
               summary: dict[str, float] | None = None, error: str | None = None, arrays: Any = None) -> None:
        if notes.get(run_id):
            error = "; ".join([*notes[run_id], *([error] if error else [])])
        # batches: how many points batches were sent (the recorder checks that all arrived)
        event = FinishedEvent(run_id, attempt_of[run_id], status, steps_done=int(steps_done),
                              diverged_step=diverged_step, summary=summary, error=error,
                              batches=seq.get(run_id)).wire()
        if arrays:  # the final-function snapshot (metric "function"): through the bus, never the task result
            publish(event | {"arrays": run_arrays.encode(arrays)})
        else:
            publish(event)
        finished[run_id] = event

    checker = CancelChecker(settings, unit.run_ids)
    already = checker.cancelled()
    for rid in unit.run_ids:
        if rid in already:  # cancelled while queued: never start it
            finish(rid, "cancelled", error="cancelled before it started")
    configs: list[RunConfig] = [c for c in unit.configs if c.run_id not in already]
    if not configs:
        return [finished[r] for r in unit.run_ids]

    seq.update({c.run_id: 0 for c in configs})
    for c in configs:
        publish({"type": "started", "run_id": c.run_id, "attempt": attempt_of[c.run_id], "worker": me,
                 "time": time.time()})
    beat = _Heartbeat(publish, {c.run_id: attempt_of[c.run_id] for c in configs}, settings.heartbeat_s)
    beat.start()
    flagged: set[str] = set()

    def on_metrics(batch: Any) -> None:
        # one points event per run per flush: columnar lists, numbered by seq within (run, attempt)
        for i, rid in enumerate(batch.run_ids):
            step, metric, value = batch.for_run(i)
            if len(step) == 0:
                continue
            if seq[rid] < sent.get(rid, 0):  # a retry after out of memory: this batch was sent by the first try
                seq[rid] += 1
                continue
            publish({"type": "points", "run_id": rid, "attempt": attempt_of[rid], "seq": seq[rid],
                     "step": [int(s) for s in step], "metric": list(metric), "value": [float(v) for v in value]})
            seq[rid] += 1

    def should_cancel() -> set[str]:
        # the runs asked to stop: the trainer freezes those members and trains the others on
        try:
            flagged.update(checker.cancelled())
        except Exception as exc:
            from redis.exceptions import ConnectionError as RedisConnectionError  # only a broker's flags
            from redis.exceptions import TimeoutError as RedisTimeoutError  # (kept off the local worker's start)

            if not isinstance(exc, RedisConnectionError | RedisTimeoutError):
                raise
            log.debug("cannot read the cancel flags now: %s", exc)  # a broker restarting: look at the next flush
        return flagged

    def on_result(r: Any) -> None:
        # a member that diverged or was cancelled ends at that flush, not with the whole unit
        status = r.status
        if status == "done" and r.run_id in flagged and r.steps_done < configs[0].train.steps:
            status = "cancelled"
        finish(r.run_id, status, r.steps_done, r.diverged_step, dict(r.summary), arrays=r.arrays)
        beat.finish(r.run_id)

    dev = device or unit.device
    budget, source = memory_budget(settings, dev)

    def train(part: list[RunConfig]) -> None:
        """Train `part` as one ensemble; out of memory, its unfinished runs in halves (module docstring)."""
        began = time.monotonic()
        first: list[tuple[float, int]] = []  # (time, steps) of the first flush: the setup ends there

        def on_progress(steps: int, _total: int) -> None:
            if not first:
                first.append((time.monotonic(), steps))

        for c in part:  # a retry starts its points from seq 0 again; sent ones are skipped
            sent[c.run_id], seq[c.run_id] = max(sent.get(c.run_id, 0), seq[c.run_id]), 0
        oom = ""  # why the try ran out of memory: the estimate's check, or the device's own error
        try:
            memory.require_fits(part, budget, f"this worker's budget, {source}")
            results = train_ensemble(
                part, device=dev, data_root=settings.data_dir, on_metrics=on_metrics, should_cancel=should_cancel,
                flush_every=flush_every, on_result=on_result, on_progress=on_progress,
            )  # fmt: skip
        except Exception as exc:
            if not memory.is_out_of_memory(exc):
                raise
            oom = "the estimate is above the budget" if isinstance(exc, memory.UnitTooBig) else (
                f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
        if oom:  # outside the except block: the failed try's frames and tensors are gone
            _split(part, oom)
            return
        # what this machine sustains now: the Launch page's estimate is based on it (tasks.planner)
        record_unit(settings.data_dir, dev, part, began=began, first=first[0] if first else None,
                    ended=time.monotonic(), steps=max((r.steps_done for r in results), default=0))
        for r in results:
            if r.run_id not in finished:
                on_result(r)

    def _split(part: list[RunConfig], oom: str) -> None:
        memory.release_cached(dev)
        left = [c for c in part if c.run_id not in finished]
        if len(left) == 1:
            need = memory.unit_bytes(left)
            reason = (
                f"out of memory with one member ({oom}): it needs about {memory.describe(need)} (the estimate, "
                f"engine/memory.py) and this worker's budget is {memory.describe(budget)}, {source}; raise "
                "device_memory (GAMMA_LAB_DEVICE_MEMORY) or train on a bigger device, or a smaller width, batch "
                "or probe_size"
            )
            log.error("unit %s: run %s %s", unit.unit_id, left[0].run_id, reason)
            finish(left[0].run_id, "failed", error=reason)
            beat.finish(left[0].run_id)
            return
        halves = [left[: len(left) // 2], left[len(left) // 2 :]]
        note = f"split after out of memory: {len(left)} → {len(halves[0])} + {len(halves[1])}"
        log.warning("unit %s: %s (%s)", unit.unit_id, note, oom)
        for c in left:
            notes.setdefault(c.run_id, []).append(note)
        for half in halves:
            train(half)

    try:
        train(configs)
    except DiskFull:  # run_unit says it in one line and records the runs failed
        raise
    except BrokerUnavailable as exc:  # the bus is gone for longer than the publisher waits: say it in one line
        beat.stop()
        log.error("unit %s stopped: %s; the recorder marks its runs lost after %g s without a heartbeat "
                  "(then `gamma-lab rerun SWEEP`)", unit.unit_id, exc, settings.lost_after_s)
        _report_failed(finish, configs, finished, f"the event broker was unreachable: {exc}")
    except Exception as exc:
        beat.stop()
        text = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"
        log.error("unit %s failed: %s", unit.unit_id, text)
        _report_failed(finish, configs, finished, text)
    finally:
        beat.stop()
    return [finished[r] for r in unit.run_ids if r in finished]
