"""The recorder: the single owner of the DuckDB file. Reads the bus, ingests, commits, then acks.

DuckDB allows one read-write process per file (a second gets "Could not set lock on file"), and a
second connect inside the same process would silently share the database, so ownership is decided
first by an advisory flock on `<metrics>.recorder.lock` (storage.ownership: the lock, its owner and
the hand-over protocol). The loser gets RecorderBusy("a recorder is already running (pid N)") and its caller
only publishes.

Crash safety, per batch of events: (1) points go to DuckDB in one transaction that also records
(run, attempt, seq) -- a replayed batch is skipped; (2) registry transitions, each idempotent and
guarded by attempt; (3) only then the bus acknowledgement (spool: unlink; Redis: XACK + XTRIM MINID).
A kill -9 anywhere replays at most the unacknowledged events, which (1) and (2) absorb.

Malformed events (undecodable, wrong types, unknown run) are set aside with a reason (spool:
rejected/<name> + <name>.reason; Redis: the dead-letter stream) and ingestion goes on.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from storage import run_arrays
from storage.broker_loss import LostQueue, ingested_batches
from storage.bus import Delivery, RedisConsumer, SpoolConsumer, open_consumer
from storage.diskspace import DiskFull, below_low_water, ensure_reserve, has_room, is_disk_full, release_reserve
from storage.events import FinishedEvent, HeartbeatEvent, StartedEvent
from storage.export import answer_request
from storage.logs import configure_logging
from storage.metric_store import (
    MetricStore,
    PointsBatch,
    StoreCorrupt,
    StoreLocked,
    check_file,
    is_damage,
)
from storage.ownership import (  # the ownership protocol lives there; its names are re-exported here
    HANDOVER_FRESH_S,  # noqa: F401
    ROLES,
    Owner,  # noqa: F401
    OwnerLock,
    RecorderBusy,
    lock_path,
    pending_request,
    pid_alive,
    read_owner,
    request_handover,  # noqa: F401
    request_path,
)
from storage.purge import answer_request as answer_purge
from storage.recorder_claim import ClaimHeld, RecorderClaim
from storage.registry import Registry
from storage.settings import Settings, load_settings

log = logging.getLogger(__name__)


REQUESTS = ("export", "purge")  # events that ask the recorder for something (answered in a file)


class Recorder:
    """Owns settings.metrics_path. Use as a thread (start/stop) or in the foreground (run_forever)."""

    def __init__(
        self,
        settings: Settings,
        *,
        max_events: int = 2000,
        poll_s: float = 0.2,
        consumer: SpoolConsumer | RedisConsumer | None = None,
        lock_wait_s: float = 10.0,
        role: str = "cli",
    ):
        if role not in ROLES:
            raise ValueError(f"role: must be one of {', '.join(ROLES)} (got {role!r})")
        self.settings = settings
        self.role = role
        settings.ensure_dirs()
        # room for the final states when the disk fills (storage.diskspace): made here, or, on a disk
        # already full, given up now so that the registry can open and record them
        release_reserve(settings.data_dir) if below_low_water(settings.data_dir) else ensure_reserve(settings.data_dir)
        if role != "dashboard" and (asker := pending_request(settings)) is not None:
            # recording is being handed to that dashboard: taking the free lock now would ping-pong
            raise RecorderBusy(f"recording is being handed over to the dashboard (pid {asker})")
        self._lock = OwnerLock(lock_path(settings), role)
        if role == "dashboard":  # a request addressed to the previous owner is answered now
            request_path(settings).unlink(missing_ok=True)
        try:
            self.store = self._open_store(lock_wait_s)
        except StoreLocked as exc:
            self._lock.release()
            raise RecorderBusy(f"a recorder is already running elsewhere: {exc}") from None
        except BaseException:
            self._lock.release()
            raise
        try:
            self.registry = Registry(settings.registry_url)
        except BaseException:  # e.g. RegistryUnreadable: leave the DuckDB file and the lock free again
            self.store.close()
            self._lock.release()
            raise
        try:
            self.consumer = consumer or open_consumer(settings)
        except BaseException:  # e.g. Redis down: the same, or this process locks itself out for good
            self.registry.close()
            self.store.close()
            self._lock.release()
            raise
        # with a broker, one data folder records the lab's events (storage.recorder_claim)
        self._claim = RecorderClaim(self.consumer.client, settings.metrics_path) if isinstance(
            self.consumer, RedisConsumer
        ) else None
        try:
            if self._claim is not None:
                self._claim.acquire()
        except BaseException as exc:
            self.consumer.close()
            self.registry.close()
            self.store.close()
            self._lock.release()
            if isinstance(exc, ClaimHeld):
                raise RecorderBusy(str(exc)) from None
            raise
        self.max_events = max_events
        self.poll_s = poll_s
        self._known_runs: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_lost_check = 0.0
        self._sent_batches: dict[tuple[str, int], int] = {}  # (run, attempt) -> batches its finished event names
        self._lost_queue = LostQueue()  # queued units a broker restart without persistence took with it
        self.stats = {"events": 0, "points": 0, "rejected": 0, "batches": 0}
        # (run, attempt) -> the last train_loss step this recorder stored: `sweep --wait`'s progress bar
        # reads it in this process instead of querying the store twice a second beside the training;
        # for the attempts whose start it applied, it holds every point there is (absent: none yet)
        self.last_steps: dict[tuple[str, int], int] = {}
        self.seen_started: set[tuple[str, int]] = set()
        self.last_error: str | None = None
        self.store_damaged: StoreCorrupt | None = None  # found damaged while recording: paused, see step
        self.disk_full: DiskFull | None = None  # no space left in the data folder: paused, see step
        self._store_closed = False
        self.handed_over_to: int | None = None  # the dashboard's pid once this recorder yielded
        self._closed = False
        self._close_lock = threading.Lock()

    def _open_store(self, lock_wait_s: float) -> MetricStore:
        """Open the metrics file read-write. We hold the owner lock, so no other recorder runs: a
        DuckDB lock conflict now is a short-lived reader (`gamma-lab status`/`export` reading the
        file directly while nobody records). Wait for it rather than give up recording for good."""
        deadline = time.monotonic() + lock_wait_s
        while True:
            try:
                return MetricStore(self.settings.metrics_path)
            except StoreLocked:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    # -- one step

    def _unknown(self, run_ids: set[str]) -> set[str]:
        missing = run_ids - self._known_runs
        if missing:
            self._known_runs |= self.registry.existing_run_ids(missing)
        return run_ids - self._known_runs

    def _reject(self, d: Delivery, reason: str) -> None:
        self.consumer.reject(d, reason)
        self.stats["rejected"] += 1

    def process(self, deliveries: Sequence[Delivery]) -> int:
        """Ingest, commit, update the registry, then acknowledge. Returns points stored."""
        good: list[Delivery] = []
        for d in deliveries:
            if d.event is None:
                self._reject(d, d.error or "undecodable event")
            else:
                good.append(d)
        referenced: set[str] = set()
        for d in good:
            ev = d.event or {}
            if ev["type"] in REQUESTS:  # names runs to read or delete, not to record
                continue
            referenced |= set(ev["run_ids"]) if ev["type"] == "heartbeat" else {ev["run_id"]}
        unknown = self._unknown(referenced)
        kept: list[Delivery] = []
        for d in good:
            ev = d.event or {}
            if ev["type"] == "heartbeat":
                ev["run_ids"] = [r for r in ev["run_ids"] if r not in unknown]
                if not ev["run_ids"]:
                    self._reject(d, "heartbeat names no known run")
                    continue
            elif ev["type"] not in REQUESTS and ev["run_id"] in unknown:
                self._reject(d, f"unknown run {ev['run_id']!r} (not in the registry)")
                continue
            kept.append(d)

        points = [d for d in kept if (d.event or {})["type"] == "points"]
        stored = 0
        try:
            stored = self.store.ingest([PointsBatch.from_event(d.event or {}) for d in points])
        except (StoreCorrupt, DiskFull):  # the file or the disk, not the events: nothing is set aside
            raise
        except Exception as exc:  # noqa: BLE001 - isolate the poison batch, keep the rest
            log.warning("batch ingest failed (%s); retrying event by event", exc)
            for d in points:
                try:
                    stored += self.store.ingest([PointsBatch.from_event(d.event or {})])
                except (StoreCorrupt, DiskFull):
                    raise
                except Exception as one:  # noqa: BLE001
                    self._reject(d, f"cannot store points: {type(one).__name__}: {one}")
                    kept.remove(d)

        self._ingest_arrays(kept)  # final-function snapshots: stored before the registry hears of the end

        # registry transitions of the whole batch: one transaction, one sweep recount per touched sweep
        started, beats, finished = [], [], []
        for d in kept:
            ev = d.event or {}
            kind = ev["type"]
            if kind == "started":
                started.append(StartedEvent.from_wire(ev))
            elif kind == "heartbeat":
                beats.append(HeartbeatEvent.from_wire(ev))
            elif kind == "finished":
                fin = FinishedEvent.from_wire(ev)
                finished.append(fin)
                if fin.batches is not None:
                    self._sent_batches[(fin.run_id, fin.attempt)] = fin.batches
        finished = self._no_gaps(finished)
        if started or beats or finished:
            self.registry.apply_events(started=started, heartbeats=beats, finished=finished)
        self.seen_started.update((e.run_id, e.attempt) for e in started)
        if finished:
            self.store.checkpoint()
        # export requests last, so they see every point published before them (storage.export)
        for d in [d for d in kept if (d.event or {})["type"] == "export"]:
            try:
                answer_request(self.settings, self.store, self.registry, d.event or {})
            except ValueError as exc:  # path outside the data folder: nothing written, set aside
                self._reject(d, f"export: {exc}")
                kept.remove(d)
                continue
            self._raise_if_damaged()
        # purges after the exports and the points before them: a purged run's last points go too
        for d in [d for d in kept if (d.event or {})["type"] == "purge"]:
            ev = d.event or {}
            try:
                answer_purge(self.settings, self.store, ev)
            except ValueError as exc:  # path outside the data folder: nothing deleted, set aside
                self._reject(d, f"purge: {exc}")
                kept.remove(d)
                continue
            if not ev.get("dry_run"):
                self._known_runs -= set(ev["run_ids"])  # a late event of a purged run is refused as unknown
        self._note_last_steps([d for d in points if d in kept])
        self.consumer.ack(kept)
        self.stats["events"] += len(kept)
        self.stats["points"] += stored
        self.stats["batches"] += 1
        return stored

    def _note_last_steps(self, stored: Sequence[Delivery]) -> None:
        """last_steps after these points events were stored: each one's last train_loss step."""
        for d in stored:
            ev = d.event or {}
            steps = [s for s, m in zip(ev["step"], ev["metric"], strict=True) if m == "train_loss"]
            if steps:
                key = (str(ev["run_id"]), int(ev["attempt"]))
                self.last_steps[key] = max(max(steps), self.last_steps.get(key, -1))

    def _ingest_arrays(self, kept: Sequence[Delivery]) -> None:
        """Store the `arrays` of finished events (storage.run_arrays), once per (run, attempt, name). A
        snapshot that cannot be stored is logged and left out; the run's end is recorded all the same."""
        carrying = [d.event for d in kept if d.event and d.event["type"] == "finished" and d.event.get("arrays")]

        def items(ev: dict[str, Any]) -> list[tuple[str, int, str, list[int], bytes]]:
            return [(ev["run_id"], ev["attempt"], *row) for row in run_arrays.rows(ev["arrays"])]

        try:
            self.store.ingest_arrays([item for ev in carrying for item in items(ev)])
        except (StoreCorrupt, DiskFull):
            raise
        except Exception as exc:  # noqa: BLE001 - isolate the poison snapshot, keep the rest
            log.warning("arrays ingest failed (%s); retrying event by event", exc)
            for ev in carrying:
                try:
                    self.store.ingest_arrays(items(ev))
                except (StoreCorrupt, DiskFull):
                    raise
                except Exception as one:  # noqa: BLE001
                    log.warning("run %s: its final-function snapshot was not stored: %s", ev["run_id"], one)

    def _no_gaps(self, finished: list[FinishedEvent]) -> list[FinishedEvent]:
        """A run is never recorded `done` (or `diverged`) with a gap: when its finished event says how
        many points batches the attempt sent and the store holds fewer for (run, attempt) -- the bus
        lost some, e.g. a Redis restarted without persistence -- it is recorded `failed`, naming the gap."""
        out = []
        for fin in finished:
            sent = self._sent_batches.pop((fin.run_id, fin.attempt), None)
            if sent is None or fin.status not in ("done", "diverged"):
                out.append(fin)
                continue
            got = ingested_batches(self.store, fin.run_id, fin.attempt)
            if got >= sent:
                out.append(fin)
                continue
            sweeps = self.registry.sweeps_of_run(fin.run_id)
            error = (
                f"{sent - got} of {sent} points batches of attempt {fin.attempt} never reached the recorder (the "
                f"event broker lost them: restarted without persistence?), so its curves have gaps; run "
                f"`gamma-lab rerun {sweeps[0] if sweeps else fin.run_id}` to train it again"
            )
            log.warning("run %s: %s", fin.run_id, error)
            out.append(replace(fin, status="failed", error=error))
        return out

    def _check_lost(self) -> None:
        """Runs without a heartbeat for lost_after_s become lost (at most once per heartbeat period)."""
        now = time.time()
        if now - self._last_lost_check < self.settings.heartbeat_s:
            return
        self._last_lost_check = now
        lost = self.registry.mark_lost(self.settings.lost_after_s, now=now)
        if lost:
            log.warning("marked %d run(s) lost (no heartbeat for %.0f s)", len(lost), self.settings.lost_after_s)

    def step(self, block_s: float | None = None) -> int:
        """Read one batch of events and record it; check for lost runs when caught up."""
        if self._claim is not None:
            self._claim.refresh()
        self._resume_if_possible()  # raises the pause's one-line error while the store cannot be written
        deliveries = self.consumer.read(self.max_events, self.poll_s if block_s is None else block_s)
        self._lost_queue.step(self.registry, self.consumer)  # the broker lost its data: settle its lost units
        stored = self._process_or_pause(deliveries) if deliveries else 0
        # only when caught up: a backlog of old heartbeats must not make live runs look dead
        if len(deliveries) < self.max_events:
            self._check_lost()
        return stored

    # -- a damaged store or a full disk: pause (events stay unacknowledged), resume when fixed

    def _raise_if_damaged(self) -> None:
        """An export that read a damaged block answered its requester with the error (storage.export)
        and left the store marked damaged (MetricStore.reader): raise it, so that nothing of this batch
        is acknowledged and nothing is written to that file again (step pauses)."""
        if self.store.damaged is not None:
            raise self.store.damaged

    def _process_or_pause(self, deliveries: Sequence[Delivery]) -> int:
        if below_low_water(self.settings.data_dir):  # stop before the margin kept for the final states
            self._pause_full(DiskFull(self.settings.data_dir))
        try:
            return self.process(deliveries)
        except Exception as exc:
            if isinstance(exc, StoreCorrupt) or self.store.damaged is not None or is_damage(exc):
                self._pause_damaged(self.store.damaged or exc)  # e.g. an export that read a damaged block
            elif is_disk_full(exc):
                self._pause_full(exc)
            raise

    def _pause_damaged(self, exc: Exception) -> None:
        """The store was found damaged while recording: it is closed unwritten (MetricStore.mark_damaged)
        and stays closed; nothing of this batch is acknowledged. Recording resumes once the file is
        moved aside or restored (step -> _resume_if_possible)."""
        err = exc if isinstance(exc, StoreCorrupt) else self.store.mark_damaged(exc)
        self.store_damaged = err  # said once by run_forever (one line per distinct error), or by the caller
        raise err

    def _pause_full(self, exc: Exception) -> None:
        """No space left in the data folder: release the space reserve, record the running runs
        `failed` with the reason (their workers cannot publish their own ends into the full folder),
        close the store (DuckDB gives up on a database whose write failed) and keep every event
        unacknowledged; step retries calmly and records again once there is room."""
        release_reserve(self.settings.data_dir)
        sweeps = self._fail_running(exc)  # first, into the room the reserve left
        self.store.close(checkpoint=False)  # reopened from its file and WAL when there is room
        self._store_closed = True
        full = DiskFull(self.settings.data_dir, " / ".join(sweeps) if sweeps else "SWEEP")
        self.disk_full = full  # said once by run_forever (one line per distinct error), or by the caller
        raise full

    def _fail_running(self, exc: Exception) -> list[str]:
        """Running runs -> failed with the disk-full reason (attempt-guarded, like any finished event:
        their own `done`, still waiting in the spool, wins if it arrives). Returns their sweep ids."""
        by_sweep: dict[str, list[FinishedEvent]] = {}
        try:
            for sweep in self.registry.list_sweeps(archived=None):  # archived sweeps' runs too
                if not sweep["counts"].get("running"):
                    continue
                for run in self.registry.list_runs(sweep["id"], status="running"):
                    by_sweep.setdefault(sweep["id"], []).append(FinishedEvent(run["run_id"], run["attempt"], "failed"))
            events: list[FinishedEvent] = []
            for sweep_id, evs in by_sweep.items():
                reason = str(DiskFull(self.settings.data_dir, sweep_id))
                events += [replace(e, error=reason) for e in evs if e.run_id not in {x.run_id for x in events}]
            if events:
                self.registry.finish_many(events)
        except Exception as reg_exc:  # noqa: BLE001 - the registry shares the full disk: lost, later
            log.warning("cannot record the running runs failed either (%s)", str(reg_exc).strip().splitlines()[0])
        return sorted(by_sweep)

    def _resume_if_possible(self) -> None:
        """While paused: cheap checks only (a stat, the free space), no write; reopen the store when
        the damaged file was moved aside or restored, or when the disk has room again."""
        if self.store_damaged is not None:
            try:
                check_file(self.settings.metrics_path)  # the same damaged file: its marker says so
            except StoreCorrupt:
                raise self.store_damaged from None
            self.store = self._open_store(0.0)  # raises StoreCorrupt again if the new file is damaged too
            self.store_damaged = None
        if self.disk_full is not None:
            if not has_room(self.settings.data_dir):
                raise self.disk_full
            ensure_reserve(self.settings.data_dir)
        if self._store_closed:
            self.store = self._open_store(0.0)
            self._store_closed = False
            self.disk_full = None

    def drain(self, timeout_s: float = 30.0) -> None:
        """Record until the bus is empty (tests, CLI `--once`)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            n_before = self.stats["events"] + self.stats["rejected"]
            self.step(block_s=0.05)
            if self.stats["events"] + self.stats["rejected"] == n_before and self.consumer.pending_count() == 0:
                if not self._lost_queue.pending:  # (units a broker restart took: settled a few seconds on)
                    return

    # -- loops

    def run_forever(self) -> None:
        """Foreground loop until stop() (or SIGTERM/SIGINT in the main thread). Errors are logged and
        retried: nothing is acknowledged before it is stored, so a retry loses nothing.

        A recorder whose role is not "dashboard" yields to a dashboard that asks (request_handover):
        between two steps (each ends acknowledged, so nothing is lost or replayed twice) it closes
        the store, releases the lock and returns with handed_over_to set."""
        while not self._stop.is_set():
            if self.role != "dashboard" and (asker := pending_request(self.settings)) is not None:
                self.handed_over_to = asker
                self.close()
                log.info("handed recording over to pid %d", asker)
                return
            try:
                self.step()
                if self.last_error is not None:
                    log.warning("recording again (the last error was %s)", self.last_error)
                self.last_error = None
            except Exception as exc:  # noqa: BLE001 - the loop must survive a hiccup (DB busy, Redis down)
                error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                if error != self.last_error:  # one line per distinct error, not a traceback a second
                    log.warning("recorder step failed (%s); retrying every second", error)
                    log.debug("recorder step failed", exc_info=True)
                self.last_error = error
                self.consumer.rewind()  # what was read but not acked must be read again
                try:  # the registry may answer while the bus does not: runs whose workers went silent end lost
                    self._check_lost()
                except Exception as lost_exc:  # noqa: BLE001
                    log.debug("lost-run check failed: %s", lost_exc)
                self._stop.wait(1.0)

    def start(self) -> Recorder:
        """Record in a daemon thread of this process (the dashboard)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.run_forever, name="gamma-lab-recorder", daemon=True)
            self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if (wake := getattr(self.consumer, "wake", None)) is not None:
            wake.set()  # a spool read waiting for events returns now, not after its poll (0.2 s)
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.close()

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            if self._claim is not None:
                self._claim.release()
            self.consumer.close()
            self.store.close()
            self.registry.close()
            self._lock.release()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_if_free(settings: Settings, role: str = "cli") -> Recorder | None:
    """Record in this process unless another recorder holds the DuckDB file (then None: the events
    this process causes are ingested by that one)."""
    try:
        recorder = Recorder(settings, role=role)
    except RecorderBusy:
        return None
    return recorder.start()


def open_when_free(settings: Settings, stop: threading.Event, *, poll_s: float = 0.5, **kwargs: Any) -> Recorder | None:
    """The standalone recorder's first Recorder. A `gamma-lab` command that records for a while (the
    catch-up of `status`/`rerun`, a `sweep --wait`) only borrows the store: wait for it to finish
    instead of exiting -- a `gamma-lab recorder` started a moment after a `rerun` gave up after 10 s
    and nothing recorded the rerun's events. Another dashboard or standalone recorder is a real
    conflict: RecorderBusy, as before. None when `stop` is set while waiting."""
    said = False
    while True:
        try:
            return Recorder(settings, **kwargs)
        except RecorderBusy:
            owner = read_owner(settings)
            if not (owner.role == "cli" and owner.pid is not None and pid_alive(owner.pid)):
                raise
            if not said:
                log.info("standing by: %s records now; recording here once it stops", owner.describe())
                said = True
        if stop.wait(poll_s):
            return None
        kwargs["lock_wait_s"] = 0.0


def record_until_stopped(
    settings: Settings, recorder: Recorder, stop: threading.Event, standby_s: float = 2.0, **kwargs: Any
) -> None:
    """The standalone recorder's loop: record; after handing over to a dashboard, stand by and take
    recording back (polled every `standby_s`) once the lock is free again; return when `stop` is set.
    `recorder` is the first one (opened by the caller, so a busy store is the caller's error)."""
    current: Recorder | None = recorder
    while True:
        if current is not None:
            current._stop = stop
            try:
                current.run_forever()
            finally:
                current.close()
            if stop.is_set() or current.handed_over_to is None:
                return
            log.info("standing by: recording again when pid %d stops", current.handed_over_to)
            current = None
        if stop.wait(standby_s):
            return
        try:
            current = Recorder(settings, lock_wait_s=0.0, **kwargs)
        except RecorderBusy:
            continue
        except Exception as exc:  # noqa: BLE001 - e.g. the broker is down: stay in standby, retry
            log.warning("cannot record again yet: %s", exc)
            continue
        log.info("recording %s again", settings.metrics_path)


def stop_on_signals() -> threading.Event:
    """An event SIGTERM and SIGINT set, for a foreground recorder (record_in_foreground):
    record_until_stopped ends between batches, nothing half-stored."""
    stop = threading.Event()

    def _on_signal(_sig: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return stop


def record_in_foreground(settings: Settings, *, max_events: int = 2000, once: bool = False) -> None:
    """The one foreground recorder, behind `gamma-lab recorder` and `python -m storage.recorder`:
    waits for a command recording for a moment (a rerun's catch-up), then records until SIGTERM or
    SIGINT, standing by while a dashboard that asked has recording handed over. `once`: record what
    is on the bus, then return. Raises RecorderBusy when another process keeps the store."""
    stop = stop_on_signals()
    recorder = open_when_free(settings, stop, max_events=max_events, role="recorder")
    if recorder is None:
        return
    if once:
        recorder.drain()
        recorder.close()
        return
    log.info("recording %s from %s (Ctrl-C to stop)", settings.metrics_path, settings.broker_url or settings.spool_dir)
    record_until_stopped(settings, recorder, stop, max_events=max_events, role="recorder")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m storage.recorder`: record in the foreground until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m storage.recorder", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="data folder (default: GAMMA_LAB_DATA or ./data)")
    parser.add_argument("--once", action="store_true", help="record what is on the bus, then exit")
    parser.add_argument("--max-events", type=int, default=2000, help="events per ingest transaction")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {"data_dir": args.data_dir} if args.data_dir else {}
    settings = load_settings(**overrides)
    configure_logging(settings.broker_url, level=args.log_level.upper())  # JSON lines in lab mode
    try:
        record_in_foreground(settings, max_events=args.max_events, once=args.once)
    except RecorderBusy as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
