"""Event bus: the only way workers write. Two backends behind one Publisher/Consumer pair.

Events are JSON dicts (docs/contracts.md); started, heartbeat and finished are the wire form of
storage.events' types:
  {"type": "started",   "run_id", "attempt", "worker", "time"}
  {"type": "points",    "run_id", "attempt", "seq", "step": [...], "metric": [...], "value": [...]}
  {"type": "heartbeat", "run_ids": [...], "attempt", "worker", "time"}
  {"type": "finished",  "run_id", "attempt", "status", "steps_done", "diverged_step", "summary", "error",
   "batches", "arrays"}
A points event is one columnar batch (one message per flush, not per point); (run_id, attempt, seq)
identifies it, so a replayed message is stored once. `batches` (optional) is how many points events
the attempt published: the recorder never records `done` for a run whose batches did not all arrive.
`arrays` (optional): the run's final-function snapshot, encoded as storage.run_arrays says.

Backends
- spool directory (embedded mode): each event is one file, written to spool/tmp/ then os.replace()d
  into spool/ (atomic on one filesystem: a reader never sees half a file). Names start with a
  per-process monotonic nanosecond clock so they sort by time. Ack = unlink.
- Redis Streams (broker mode): XADD to one stream, one consumer group. On (re)start the consumer
  first reads its own pending entries (id "0": delivered before a crash, never acked), then new ones
  (">"); XAUTOCLAIM takes over entries a dead consumer left pending. Trimming uses XTRIM MINID up to
  the oldest unacknowledged id, never MAXLEN: on Redis 7.0 MAXLEN deletes entries not yet
  acknowledged, i.e. loses data.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from storage import run_arrays
from storage.diskspace import DiskFull, below_low_water, is_disk_full
from storage.events import FINISH_STATUSES, FinishedEvent, HeartbeatEvent, StartedEvent
from storage.settings import Settings

log = logging.getLogger(__name__)

STREAM = "gamma-lab:events"
DEAD_LETTER_STREAM = "gamma-lab:events:dead"
GROUP = "recorder"
EVENT_TYPES = ("started", "points", "heartbeat", "finished", "export", "purge")
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Celery's queues on the same Redis (tasks.celery_app.queue_for) and where kombu keeps delivered,
# unacknowledged messages: read after a broker restart without persistence (RedisConsumer.queued_task_texts)
CELERY_QUEUES = ("cpu", "gpu")
KOMBU_UNACKED = "unacked"


class BadEvent(ValueError):
    """An event that cannot be ingested; the message is the reason kept beside it."""


# ----------------------------------------------------------------------------- validation


def _need_str(ev: Mapping[str, Any], key: str) -> str:
    v = ev.get(key)
    if not isinstance(v, str) or not v:
        raise BadEvent(f"{key}: must be a non-empty string (got {v!r})")
    return v


def _need_int(ev: Mapping[str, Any], key: str, *, optional: bool = False) -> int | None:
    v = ev.get(key)
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise BadEvent(f"{key}: must be an integer >= 0 (got {v!r})")
    return v


def _need_run_ids(ids: Any) -> None:
    if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
        raise BadEvent("run_ids: must be a list of run id strings")


def validate_event(ev: Any) -> dict[str, Any]:
    """Check an event's shape and types; returns it (lists kept as lists) or raises BadEvent."""
    if not isinstance(ev, dict):
        raise BadEvent(f"event must be a JSON object (got {type(ev).__name__})")
    kind = ev.get("type")
    if kind not in EVENT_TYPES:
        raise BadEvent(f"type: must be one of {', '.join(EVENT_TYPES)} (got {kind!r})")
    if kind in ("export", "purge"):  # a request to the recorder, answered in a file at `path`
        rid = ev.get("request_id")
        if not isinstance(rid, str) or not _REQUEST_ID.fullmatch(rid):
            raise BadEvent(f"request_id: must be 1-64 letters, digits, _ or - (got {rid!r})")
        _need_str(ev, "path")
    if kind == "purge":  # delete (or, dry_run, count) purged runs' points (storage.purge)
        _need_run_ids(ev.get("run_ids"))
        if not isinstance(ev.get("dry_run", False), bool):
            raise BadEvent(f"dry_run: must be true or false (got {ev.get('dry_run')!r})")
        return ev
    if kind == "export":  # a reader asks the recorder to write points (Parquet) or arrays (.npz) to a file
        if ev.get("what", "points") not in ("points", "arrays"):
            raise BadEvent(f"what: must be points or arrays (got {ev.get('what')!r})")
        ids, sweep = ev.get("run_ids"), ev.get("sweep_id")
        if (ids is None) == (sweep is None):
            raise BadEvent("run_ids, sweep_id: give exactly one of them")
        if ids is not None:
            _need_run_ids(ids)
        if sweep is not None:
            _need_str(ev, "sweep_id")
        return ev
    _need_int(ev, "attempt")
    if kind == "heartbeat":
        _need_run_ids(ev.get("run_ids"))
    else:
        _need_str(ev, "run_id")
    if kind in ("started", "heartbeat"):
        _need_str(ev, "worker")
        t = ev.get("time")
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
            raise BadEvent(f"time: must be a number of seconds since the epoch (got {t!r})")
    elif kind == "points":
        _need_int(ev, "seq")
        step, metric, value = ev.get("step"), ev.get("metric"), ev.get("value")
        if not (isinstance(step, list) and isinstance(metric, list) and isinstance(value, list)):
            raise BadEvent("step, metric, value: must be lists (columnar batch)")
        if not len(step) == len(metric) == len(value):
            raise BadEvent(f"step, metric, value: lengths differ ({len(step)}, {len(metric)}, {len(value)})")
        if not all(type(s) is int and s >= 0 for s in step):
            raise BadEvent("step: must hold integers >= 0")
        if not all(isinstance(m, str) and m for m in metric):
            raise BadEvent("metric: must hold non-empty strings")
        # None stands for a non-number (strict JSON encoders write NaN as null)
        if not all(v is None or (type(v) in (int, float)) for v in value):
            raise BadEvent("value: must hold numbers (NaN/inf allowed) or null")
    elif kind == "finished":
        if ev.get("status") not in FINISH_STATUSES:
            raise BadEvent(f"status: must be one of {', '.join(FINISH_STATUSES)} (got {ev.get('status')!r})")
        _need_int(ev, "steps_done", optional=True)
        _need_int(ev, "diverged_step", optional=True)
        _need_int(ev, "batches", optional=True)  # points events this attempt published (gap check)
        summary = ev.get("summary")
        if summary is not None and not (
            isinstance(summary, dict)
            and all(v is None or type(v) in (int, float) for v in summary.values())
        ):
            raise BadEvent("summary: must be an object of numbers")
        err = ev.get("error")
        if err is not None and not isinstance(err, str):
            raise BadEvent(f"error: must be a string or null (got {type(err).__name__})")
        if ev.get("arrays") is not None:  # the final-function snapshot: names, shapes and lengths checked
            try:
                run_arrays.validate(ev["arrays"])
            except ValueError as exc:
                raise BadEvent(f"arrays: {exc}") from None
    return ev


def encode(ev: Mapping[str, Any]) -> bytes:
    """JSON with NaN/Infinity tokens kept (Python's json reads them back as floats)."""
    return json.dumps(ev, separators=(",", ":"), allow_nan=True).encode()


def decode(raw: bytes) -> dict[str, Any]:
    try:
        ev = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadEvent(f"not valid JSON (truncated file?): {exc}") from None
    return validate_event(ev)


# ----------------------------------------------------------------------------- publishers


class Publisher:
    """Base publisher: event builders on top of `publish`. Numbers points batches per (run, attempt)."""

    def __init__(self) -> None:
        self._seq: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    def publish(self, event: Mapping[str, Any]) -> None:
        self.publish_many([event])

    def publish_many(self, events: Sequence[Mapping[str, Any]]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- builders (validated before they leave, so a worker's bug shows up in the worker)

    def started(self, run_id: str, attempt: int, worker: str) -> None:
        self.publish(validate_event(StartedEvent(run_id, attempt, worker, time.time()).wire()))

    def heartbeat(self, run_ids: Sequence[str], attempt: int, worker: str) -> None:
        self.publish(validate_event(HeartbeatEvent(list(run_ids), attempt, worker, time.time()).wire()))

    def next_seq(self, run_id: str, attempt: int) -> int:
        with self._lock:
            seq = self._seq.get((run_id, attempt), 0)
            self._seq[(run_id, attempt)] = seq + 1
        return seq

    def points_event(
        self, run_id: str, attempt: int, step: Iterable[int], metric: Iterable[str], value: Iterable[float],
        seq: int | None = None,
    ) -> dict[str, Any]:
        """Build a points event; `seq` defaults to this publisher's next number for (run, attempt).

        Accepts numpy arrays (step (P,) int, value (P,) float)."""
        ev = {
            "type": "points", "run_id": run_id, "attempt": attempt,
            "seq": self.next_seq(run_id, attempt) if seq is None else seq,
            "step": [int(s) for s in step], "metric": [str(m) for m in metric],
            "value": [float(v) for v in value],
        }
        return validate_event(ev)

    def points(self, run_id: str, attempt: int, step: Iterable[int], metric: Iterable[str],
               value: Iterable[float], seq: int | None = None) -> None:
        self.publish(self.points_event(run_id, attempt, step, metric, value, seq))

    def finished(
        self, run_id: str, attempt: int, status: str, *, steps_done: int | None = None,
        diverged_step: int | None = None, summary: Mapping[str, float] | None = None, error: str | None = None,
        batches: int | None = None,
    ) -> None:
        self.publish(validate_event(FinishedEvent(run_id, attempt, status, steps_done=steps_done,
                                                  diverged_step=diverged_step, summary=summary, error=error,
                                                  batches=batches).wire()))


class _MonotonicNames:
    """File names that sort by time within and across processes: <ns clock>-<pid>-<counter>-<rand>."""

    def __init__(self) -> None:
        self._last = 0
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._tag = uuid.uuid4().hex[:6]

    def next(self) -> str:
        with self._lock:
            now = max(time.time_ns(), self._last + 1)  # wall clocks can step back; names must not
            self._last = now
            n = next(self._counter)
        return f"{now:020d}-{os.getpid()}-{n:09d}-{self._tag}.evt"


SPOOL_SYNC_THREADS = 4


class _SideBySide:
    """A few threads for a spool's many small synchronous file operations (the fsync of each event
    published, the unlink of each acknowledged): concurrent ones share one journal commit on ext4
    (0.2 ms each instead of 3; with the `discard` mount option an unlink of a synced file costs that
    too). Made on first use, for two items or more; stopped by shutdown (the owner's close)."""

    def __init__(self) -> None:
        self._pool: Any = None

    def map(self, fn: Any, *items: Sequence[Any]) -> list[Any]:
        if len(items[0]) < 2:
            return [fn(*args) for args in zip(*items, strict=True)]
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=SPOOL_SYNC_THREADS, thread_name_prefix="gamma-lab-spool")
        return list(self._pool.map(fn, *items))

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class SpoolPublisher(Publisher):
    """Embedded mode: one file per event, made visible atomically by os.replace."""

    def __init__(self, spool_dir: Path):
        super().__init__()
        self.spool_dir = Path(spool_dir)
        self.tmp_dir = self.spool_dir / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._names = _MonotonicNames()
        self._side = _SideBySide()

    def publish_many(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Each event's bytes fsynced in spool/tmp, then made visible in order. Several events are
        written and fsynced side by side: concurrent fsyncs share one journal commit (ext4: 0.2 ms an
        event instead of 3). An error stops at that event: the ones before it are published."""
        if below_low_water(self.spool_dir.parent):  # the last megabyte is for final states and log lines
            raise DiskFull(self.spool_dir.parent)
        names = [self._names.next() for _ in events]
        errors = self._side.map(self._write_tmp, names, events)
        for i, (name, error) in enumerate(zip(names, errors, strict=True)):
            if error is None:
                try:
                    os.replace(self.tmp_dir / name, self.spool_dir / name)  # the bytes are on disk first
                    continue
                except OSError as exc:
                    error = exc
            for later in names[i:]:  # no half-written event left behind (and its blocks freed)
                with contextlib.suppress(OSError):
                    (self.tmp_dir / later).unlink()
            if isinstance(error, OSError) and is_disk_full(error):  # one line for the caller, not a traceback
                raise DiskFull(self.spool_dir.parent) from None
            raise error

    def _write_tmp(self, name: str, ev: Mapping[str, Any]) -> Exception | None:
        try:
            with open(self.tmp_dir / name, "wb") as fh:
                fh.write(encode(ev))
                fh.flush()
                os.fsync(fh.fileno())  # the rename must not become visible before the bytes
        except Exception as exc:  # noqa: BLE001 - raised by publish_many, in order, after the ones before it
            return exc
        return None

    def close(self) -> None:
        self._side.shutdown()


class BrokerUnavailable(ConnectionError):
    """The broker stayed unreachable for longer than a publisher's retry bound."""


class RedisPublisher(Publisher):
    """Broker mode: XADD to the events stream (no MAXLEN: trimming is the recorder's job, by MINID).

    Rides out a short broker outage (a restart): a publish that cannot reach Redis is retried with
    backoff for up to `retry_s` seconds (one log line when the broker becomes unreachable, one when it
    answers again), then raises BrokerUnavailable. After that give-up, publishes try once and fail fast
    until the broker answers again (a failing unit's last reports must not wait out the bound again).
    A retried XADD may land twice; the recorder stores a (run, attempt, seq) once and the other events
    are idempotent."""

    def __init__(self, url: str, stream: str = STREAM, *, retry_s: float = 20.0):
        super().__init__()
        import redis

        self.client = redis.Redis.from_url(url)
        self.stream = stream
        self.retry_s = retry_s
        self._down_since: float | None = None  # shared by the unit's thread and its heartbeat thread
        self._gave_up = False
        self._state = threading.Lock()

    def publish_many(self, events: Sequence[Mapping[str, Any]]) -> None:
        import redis

        payload: list[dict[Any, Any]] = [{"data": encode(ev)} for ev in events]
        deadline = time.monotonic() + (0.0 if self._gave_up else self.retry_s)
        delay = 0.1
        while True:
            try:
                pipe = self.client.pipeline(transaction=False)
                for fields in payload:
                    pipe.xadd(self.stream, fields)
                pipe.execute()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self._note_down(exc)
                if time.monotonic() >= deadline:
                    self._gave_up = True
                    raise BrokerUnavailable(
                        f"broker unreachable for more than {self.retry_s:g} s ({exc}); giving up"
                    ) from None
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, 2.0)
                continue
            self._note_up()
            return

    def _note_down(self, exc: Exception) -> None:
        with self._state:
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
        log.warning("broker unreachable (%s): holding events and retrying for up to %g s", exc, self.retry_s)

    def _note_up(self) -> None:
        if self._down_since is None:
            return
        with self._state:
            since, self._down_since, self._gave_up = self._down_since, None, False
        if since is not None:
            log.warning("broker reachable again after %.1f s: events flow again", time.monotonic() - since)

    def close(self) -> None:
        self.client.close()


def open_publisher(settings: Settings) -> Publisher:
    """Redis Streams when a broker is configured, else the spool directory in the data folder."""
    if settings.broker_url:
        # ride out a broker restart for as long as the recorder waits before calling a run lost
        return RedisPublisher(settings.broker_url, retry_s=settings.lost_after_s)
    return SpoolPublisher(settings.spool_dir)


# ----------------------------------------------------------------------------- consumers


@dataclass
class Delivery:
    """One received message. `event` is None when it could not be decoded; `error` says why."""

    token: Any  # spool: Path of the file; redis: the stream entry id
    raw: bytes
    event: dict[str, Any] | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Consumer(Protocol):
    def read(self, max_events: int = 1000, block_s: float = 0.5) -> list[Delivery]: ...
    def ack(self, deliveries: Sequence[Delivery]) -> None: ...
    def reject(self, delivery: Delivery, reason: str) -> None: ...
    def rewind(self) -> None: ...
    def close(self) -> None: ...


def _decoded(token: Any, raw: bytes) -> Delivery:
    try:
        return Delivery(token, raw, event=decode(raw))
    except BadEvent as exc:
        return Delivery(token, raw, error=str(exc))


def _unlink_if_there(path: str | Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class SpoolConsumer:
    """Reads spool files oldest first; ack deletes them; reject moves them to rejected/ with a .reason."""

    def __init__(self, spool_dir: Path):
        self.spool_dir = Path(spool_dir)
        self.rejected_dir = self.spool_dir / "rejected"
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.rejected_dir.mkdir(exist_ok=True)
        self.wake = threading.Event()  # set (Recorder.stop): a read waiting for events returns now
        self._side = _SideBySide()

    def read(self, max_events: int = 1000, block_s: float = 0.5) -> list[Delivery]:
        deadline = time.monotonic() + block_s
        while True:
            with os.scandir(self.spool_dir) as it:
                names = sorted(e.name for e in it if e.name.endswith(".evt") and e.is_file())
            if names or time.monotonic() >= deadline:
                break
            if self.wake.wait(min(0.05, max(0.0, deadline - time.monotonic()))):
                break
        out = []
        for name in names[:max_events]:
            path = self.spool_dir / name
            try:
                raw = path.read_bytes()
            except FileNotFoundError:  # acked by a previous incarnation between listing and reading
                continue
            out.append(_decoded(path, raw))
        return out

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        self._side.map(_unlink_if_there, [d.token for d in deliveries])  # side by side: 36 in 7 ms, not 110

    def reject(self, delivery: Delivery, reason: str) -> None:
        path = Path(delivery.token)
        target = self.rejected_dir / path.name
        (self.rejected_dir / (path.name + ".reason")).write_text(reason + "\n")
        try:
            os.replace(path, target)
        except FileNotFoundError:
            pass
        log.warning("rejected spool event %s: %s", path.name, reason)

    def rewind(self) -> None:
        """Nothing to do: unacknowledged files stay in the folder and are read again."""

    def pending_count(self) -> int:
        with os.scandir(self.spool_dir) as it:
            return sum(1 for e in it if e.name.endswith(".evt"))

    def close(self) -> None:
        self._side.shutdown()


class RedisConsumer:
    """Consumer-group reader: own pending first (id 0), then XAUTOCLAIM from dead consumers, then new (>)."""

    def __init__(self, url: str, *, consumer: str | None = None, stream: str = STREAM, group: str = GROUP,
                 claim_idle_s: float = 60.0):
        import redis

        self.client = redis.Redis.from_url(url)
        self.stream, self.group = stream, group
        # A stable name per host: a restarted recorder finds the entries it read but never acked.
        self.consumer = consumer or f"recorder@{socket.gethostname()}"
        self.claim_idle_ms = int(claim_idle_s * 1000)
        existed = bool(self.client.exists(stream))
        created = self._create_group()
        self._backlog = True  # start with our own pending entries
        # XAUTOCLAIM again every half idle period, not only at start: a consumer that dies while we
        # run leaves entries that become claimable only after claim_idle_s.
        self._next_claim = 0.0
        # times the broker lost the stream under us (restarted without persistence, FLUSHALL), 1 from the
        # start when no stream existed at all (a first start, or a broker that lost everything while no
        # recorder ran): the recorder then settles what such a loss orphaned (storage.broker_loss)
        self.stream_resets = int(created and not existed)

    def _create_group(self) -> bool:
        """Create the group (and the stream) unless it exists; True when it was created."""
        import redis

        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            return False
        return True

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a group command; when the broker lost the stream or the group (NOGROUP: a Redis
        restarted without persistence, or flushed), create them again, say so once, and retry."""
        import redis

        try:
            return fn(*args, **kwargs)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc) and "no such key" not in str(exc):
                raise
        if self._create_group():
            self.stream_resets += 1
            log.warning(
                "the broker lost the event stream %s (restarted without persistence, or flushed): created it "
                "again and recording goes on; events published before that and not yet recorded are gone "
                "(runs missing points end failed, queued ones lost: `gamma-lab rerun SWEEP`)",
                self.stream,
            )
        self._backlog = True
        return fn(*args, **kwargs)

    def _entries(self, reply: Any) -> list[Delivery]:
        out = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                if fields is None:  # pending entry deleted from the stream meanwhile
                    continue
                raw = fields.get(b"data", b"")
                out.append(_decoded(entry_id, raw))
        return out

    def read(self, max_events: int = 1000, block_s: float = 0.5) -> list[Delivery]:
        if self._backlog:
            got = self._entries(self._call(self.client.xreadgroup, self.group, self.consumer, {self.stream: "0"},
                                           count=max_events))
            if got:
                return got
            self._backlog = False
        if time.monotonic() >= self._next_claim:
            self._next_claim = time.monotonic() + self.claim_idle_ms / 2000.0
            # entries a dead consumer (another name) left pending for longer than claim_idle
            _next, claimed, *_ = self._call(
                self.client.xautoclaim, self.stream, self.group, self.consumer, self.claim_idle_ms, start_id="0-0",
                count=max_events)
            got = [_decoded(eid, f.get(b"data", b"")) for eid, f in claimed if f is not None]
            if got:
                self._backlog = True  # claimed entries are now our pending ones; keep draining
                return got
        reply = self._call(self.client.xreadgroup, self.group, self.consumer, {self.stream: ">"}, count=max_events,
                           block=max(1, int(block_s * 1000)))
        return self._entries(reply)

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        # XACK of entries the broker lost meanwhile answers 0, no error: nothing is left to acknowledge
        self.client.xack(self.stream, self.group, *[d.token for d in deliveries])
        self.trim()

    def trim(self) -> None:
        """XTRIM MINID to the oldest entry still pending in the group (or the last delivered one).

        Never MAXLEN: on Redis 7.0 it drops entries nobody has acknowledged yet."""
        summary = self._call(self.client.xpending, self.stream, self.group)
        if summary and summary.get("pending"):
            minid = summary["min"]
        else:
            groups = self._call(self.client.xinfo_groups, self.stream)
            info = next((g for g in groups if _s(g["name"]) == self.group), None)
            if info is None:
                return
            minid = info["last-delivered-id"]  # everything older is delivered and acked
        self.client.xtrim(self.stream, minid=minid, approximate=False)

    def reject(self, delivery: Delivery, reason: str) -> None:
        self.client.xadd(DEAD_LETTER_STREAM, {"data": delivery.raw, "reason": reason.encode(),
                                              "id": delivery.token})
        self.client.xack(self.stream, self.group, delivery.token)
        log.warning("rejected stream event %s: %s", _s(delivery.token), reason)

    def rewind(self) -> None:
        """After a failed step: read our own pending entries (id 0) again before new ones."""
        self._backlog = True

    def pending_count(self) -> int:
        summary = self._call(self.client.xpending, self.stream, self.group)
        return int(summary.get("pending", 0)) if summary else 0

    def close(self) -> None:
        self.client.close()

    def queued_task_texts(self, queues: Sequence[str] = CELERY_QUEUES) -> list[str]:
        """The bodies (decoded text) of the Celery messages this broker still holds: waiting in the
        queues' lists or delivered and not yet acknowledged (kombu's `unacked` hash). The recorder
        reads them after the broker lost its stream, to tell which queued runs lost their unit."""
        raws: list[bytes | str] = []
        for q in queues:  # kombu keeps priorities 3, 6, 9 in lists of their own beside the queue's
            for key in (q, *(f"{q}\x06\x16{p}" for p in (3, 6, 9))):
                raws += self.client.lrange(key, 0, -1)
        raws += self.client.hvals(KOMBU_UNACKED)
        return [_task_text(r) for r in raws]


def _task_text(raw: bytes | str) -> str:
    """A kombu Redis message's body as text (base64 unwrapped); the raw text when it is not one."""
    import base64

    try:
        msg = json.loads(raw)
        body = msg.get("body", "")
        if (msg.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body).decode("utf-8", "replace")
        return json.dumps(msg.get("headers")) + str(body)  # the task id (unit id) is in the headers
    except (ValueError, TypeError, AttributeError):
        return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def open_consumer(settings: Settings, **kwargs: Any) -> SpoolConsumer | RedisConsumer:
    if settings.broker_url:
        return RedisConsumer(settings.broker_url, **kwargs)
    return SpoolConsumer(settings.spool_dir)
