"""Celery over Redis: every setting in one place, each with the reason it is set.

Start a worker with `gamma-lab worker --queue gpu --device cuda:0` (see app.cli), or directly:
    GAMMA_LAB_BROKER_URL=redis://host:6379/0 celery -A tasks.celery_app worker -Q cpu -P solo

The task is thin: a work unit's JSON in, events out through storage's bus (Redis Streams), a small
summary back. Tensors never travel through the broker. No result backend: the registry and the
metric store are where results live.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, signals

log = logging.getLogger("gamma_lab.celery")

TASK_NAME = "gamma_lab.run_unit"
# Redis redelivers a task not acknowledged within the visibility timeout (default 1 h). With
# acks_late a task is acknowledged only when it ends, so a unit longer than the timeout would be
# handed to a second worker and trained twice. 48 h is above any unit the planner makes (it splits
# big groups); tasks.api raises it further per sweep if the planner's estimate says so.
VISIBILITY_TIMEOUT_S = 48 * 3600

app = Celery("gamma_lab")


def configure(broker_url: str | None = None) -> Celery:
    """Apply the settings. The broker URL comes from storage.settings (GAMMA_LAB_BROKER_URL, else
    broker_url in settings.toml)."""
    if broker_url is None:
        from storage.settings import load_settings

        broker_url = load_settings().broker_url
    app.conf.update(
        broker_url=broker_url or "redis://127.0.0.1:6379/0",
        # No result backend: results are events on the bus; the registry holds statuses.
        result_backend=None,
        task_ignore_result=True,
        # JSON only: a unit is JSON, and pickle from a broker is code execution.
        task_serializer="json",
        accept_content=["json"],
        # Acknowledge when the unit ends, not when it is received: a worker that dies mid-unit leaves
        # the message in Redis to be redelivered (then trained as a new attempt, tasks.worker).
        task_acks_late=True,
        # ...and the same when the worker process is killed (SIGKILL, OOM): requeue, do not drop.
        task_reject_on_worker_lost=True,
        # One unit at a time per worker process: a unit can take hours; prefetching a second one
        # would hold it hostage behind the first while other workers sit idle.
        worker_prefetch_multiplier=1,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        task_default_queue="cpu",
        task_create_missing_queues=True,
        # The broker may be restarted under a long-lived worker: keep trying instead of exiting.
        broker_connection_retry_on_startup=True,
        # Workers log their own lines; do not hijack the root logger of the process (tests, CLI).
        worker_hijack_root_logger=False,
        # Events for `celery events`/flower are not needed; our bus carries progress.
        worker_send_task_events=False,
    )
    return app


class _OneLineAckFailure(logging.Filter):
    """Celery logs a failed late ack (the broker was down when a unit ended) with three chained
    tracebacks. Keep its one line and say what happens next: the message stays in Redis (unless a
    restart without persistence lost it) and is delivered again; tasks.worker then trains only the
    runs that did not end, as a new attempt."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and str(record.msg).startswith(("Couldn't ack", "Couldn't reject")):
            record.exc_info = None
            record.exc_text = None
            record.msg = f"{record.msg} ({_ACK_HINT})"
        return True


_ACK_HINT = (
    "the broker was unreachable: Redis delivers the unit again unless it lost its data; runs that ended are "
    "not retrained"
)


logging.getLogger("celery.worker.request").addFilter(_OneLineAckFailure())


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _json_celery_lines(logger: logging.Logger | None = None, **_: Any) -> None:
    """In JSON mode (storage.logs) Celery's own lines are JSON too: its root lines already go through
    our handler; its task and multiprocessing loggers get handlers of their own, given ours here."""
    from celery.utils.log import get_multiprocessing_logger

    from storage.logs import match_root_format

    for each in (logger, get_multiprocessing_logger()):
        if each is not None:
            match_root_format(each)


def _broker_from_settings() -> str | None:
    """The broker of storage.settings (environment, then settings.toml), read at import: `celery -A
    tasks.celery_app` starts a worker with no other say."""
    from storage.settings import SettingsError, load_settings

    try:
        return load_settings().broker_url
    except SettingsError:  # a bad settings file: the CLI reports it; importing this module must not fail
        return os.environ.get("GAMMA_LAB_BROKER_URL") or None


configure(_broker_from_settings())


def queue_for(device: str) -> str:
    """One queue per device class: a GPU worker never takes a CPU unit and vice versa."""
    return "cpu" if device == "cpu" else "gpu"


@app.task(name=TASK_NAME, bind=True)
def run_unit_task(self: Any, unit_json: str) -> dict[str, Any]:
    """Train one unit. JSON in; events out through the bus; a tiny status summary returned."""
    from storage.bus import open_publisher
    from storage.settings import load_settings
    from tasks.worker import run_unit, set_torch_threads

    settings = load_settings()
    set_torch_threads(None)
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    device = os.environ.get("GAMMA_LAB_WORKER_DEVICE") or None
    with open_publisher(settings) as publisher:
        finished = run_unit(unit_json, settings, publisher, device=device, redelivered=redelivered)
    return {"statuses": {e["run_id"]: e["status"] for e in finished}}


# ----------------------------------------------------------------------------- live workers
# Each worker registers itself in Redis under WORKER_KEY_PREFIX + its node name: a JSON value with its
# queues, host, device, pid and times, set with a short TTL and refreshed every WORKER_REFRESH_S. A
# submit reads these keys (`live_workers`) to say whether anyone consumes its queue: instant, no
# broadcast to answer within a timeout on a busy machine. A worker that dies drops out after the TTL;
# one whose broker restarted without persistence registers again at its next refresh.
WORKER_KEY_PREFIX = "gamma-lab:worker:"
WORKER_REFRESH_S = 5.0
WORKER_TTL_S = 20


def worker_record(node: str, queues: list[str], pids: list[int] | None = None) -> dict[str, Any]:
    """`pids`: the processes that train (the pool's; the worker's own with the solo pool): a run's
    `worker` column names one of them as host:pid (tasks.workers matches runs to workers by it)."""
    import socket
    import time

    return {
        "node": node,
        "queues": sorted(queues),
        "host": socket.gethostname(),
        # the GPU as `gamma-lab worker --device` named it (cuda:1), though this process sees it as cuda
        "device": os.environ.get("GAMMA_LAB_WORKER_DEVICE_NAME") or os.environ.get("GAMMA_LAB_WORKER_DEVICE") or "cpu",
        "pid": os.getpid(),
        "pids": pids or [os.getpid()],
        "seen": time.time(),
    }


def live_workers(broker_url: str) -> list[dict[str, Any]]:
    """The workers registered in the broker now (their TTL not expired), one dict each (see
    worker_record). Raises redis.ConnectionError when the broker does not answer."""
    import json

    import redis

    client = redis.Redis.from_url(broker_url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=WORKER_KEY_PREFIX + "*", count=1000))
        out = []
        for raw in client.mget(keys) if keys else []:
            if raw is None:  # expired between SCAN and MGET
                continue
            try:
                out.append(json.loads(raw))
            except ValueError:
                continue
        return out
    finally:
        client.close()


class _Registration:
    """The worker's key, refreshed by a daemon thread until the worker stops."""

    def __init__(self, broker_url: str, node: str, queues: list[str], pool: Any = None):
        import threading

        import redis

        self.client = redis.Redis.from_url(broker_url, socket_timeout=5)
        self.key = WORKER_KEY_PREFIX + node
        self.node, self.queues, self.pool = node, queues, pool
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="gamma-lab-registration", daemon=True)
        self.failing = False

    def refresh(self) -> None:
        import json

        record = worker_record(self.node, self.queues, _pool_pids(self.pool))
        self.client.set(self.key, json.dumps(record), ex=WORKER_TTL_S)

    def _run(self) -> None:
        while True:
            try:
                self.refresh()
                self.failing = False
            except Exception as exc:  # noqa: BLE001 - the broker is down: Celery says so; retry quietly
                if not self.failing:
                    log.debug("cannot register this worker in the broker: %s", exc)
                self.failing = True
            if self.stop_event.wait(WORKER_REFRESH_S):
                return

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        try:
            self.client.delete(self.key)
        except Exception:  # noqa: BLE001 - the key expires by itself
            pass
        self.client.close()


_registration: _Registration | None = None


def _pool_pids(pool: Any) -> list[int] | None:
    """The pool's process ids now (a prefork child replaced after a crash has a new one); None when
    the pool does not say."""
    try:
        return [int(p) for p in pool.info["processes"]]
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def _consumed_queues(sender: Any) -> list[str]:
    """The queues this worker consumes (-Q), from its consumer; the app's selection as a fallback."""
    try:
        return sorted({q.name for q in sender.task_consumer.queues})
    except AttributeError:
        return sorted(app.amqp.queues.consume_from or app.amqp.queues)


@signals.worker_ready.connect
def _register_worker(sender: Any = None, **_: Any) -> None:
    global _registration
    url = app.conf.broker_url
    if not url or not str(url).startswith(("redis://", "rediss://", "unix://")):
        return
    node = getattr(sender, "hostname", None) or f"{os.getpid()}"
    _registration = _Registration(str(url), node, _consumed_queues(sender), getattr(sender, "pool", None))
    _registration.start()


@signals.worker_shutting_down.connect
def _unregister_worker(**_: Any) -> None:
    if _registration is not None:
        _registration.stop()
