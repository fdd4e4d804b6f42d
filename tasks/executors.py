"""Executors: where work units go once planned. Both take units and return at once.

LocalExecutor (embedded default): unit files in the data folder's queue and N worker processes
(`python -m tasks.local_worker`, Popen — a multiprocessing spawn pool breaks under `streamlit run`),
torch threads split across them; workers exit when the queue is empty and are started again when
work is submitted and fewer than N are alive. See tasks.local_queue.

CeleryExecutor: one Celery task per unit on the `cpu` or `gpu` queue of the Redis broker; the task
id is the unit id. See tasks.celery_app for every setting and its reason.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from storage.settings import Settings
from tasks import local_queue
from tasks.planner import WorkUnit

log = logging.getLogger("gamma_lab.executors")
RUNS_HEADER = "gamma_lab_runs"  # a Celery task's header: its unit's run ids, comma-separated


class LocalExecutor:
    def __init__(self, settings: Settings, workers: int | None = None):
        self.settings = settings
        self.workers = workers or settings.workers

    def submit(self, units: Sequence[WorkUnit]) -> None:
        local_queue.enqueue(self.settings, units)  # units first, then workers: none is orphaned
        local_queue.ensure_workers(self.settings, n=self.workers)

    def forget(self, run_ids: set[str]) -> int:
        """Drop queued units whose runs were all cancelled."""
        return local_queue.remove_pending(self.settings, run_ids)


class CeleryExecutor:
    def __init__(self, settings: Settings):
        if not settings.broker_url:
            from engine.config import ConfigError

            raise ConfigError("executor", "celery needs a broker: set GAMMA_LAB_BROKER_URL=redis://host:port/0")
        self.settings = settings
        self.broker_url: str = settings.broker_url

    def submit(self, units: Sequence[WorkUnit], max_unit_seconds: float = 0.0) -> None:
        from tasks.celery_app import VISIBILITY_TIMEOUT_S, configure, queue_for, run_unit_task

        if max_unit_seconds > VISIBILITY_TIMEOUT_S / 2:
            log.warning(
                "a unit is estimated at %.0f s, near the broker's visibility timeout (%d s): it could be "
                "redelivered while still running",
                max_unit_seconds,
                VISIBILITY_TIMEOUT_S,
            )
        app = configure(self.broker_url)
        # an explicit connection to *this* broker: the app's cached pool may point at an older URL
        with app.connection_for_write(self.broker_url) as conn:
            for unit in units:
                # task_id = unit_id (a hash of run ids and attempts): one task per unit attempt
                # the run ids ride in a header: after a broker restart without persistence the recorder
                # tells which queued runs lost their message (storage.broker_loss)
                run_unit_task.apply_async(
                    args=[unit.to_json()],
                    queue=queue_for(unit.device),
                    task_id=unit.unit_id,
                    connection=conn,
                    headers={RUNS_HEADER: ",".join(unit.run_ids)},
                )
        per_queue: dict[str, int] = {}
        for unit in units:
            per_queue[queue_for(unit.device)] = per_queue.get(queue_for(unit.device), 0) + 1
        if per_queue:
            self._warn_if_unserved(self.broker_url, per_queue)

    @staticmethod
    def _warn_if_unserved(broker_url: str, per_queue: dict[str, int]) -> None:
        """Say so when no worker consumes a queue we just filled: a user launched a sweep before
        starting a worker (or with --device cuda and only CPU workers) and watched it sit `queued`.
        Reads the workers' registrations in the broker (tasks.celery_app.live_workers): a broadcast
        asking them, answered within a second, missed busy workers and warned falsely."""
        from tasks.celery_app import live_workers

        try:
            workers = live_workers(broker_url)
        except Exception as exc:  # noqa: BLE001 - a best-effort hint; the units are queued regardless
            log.debug("could not read the workers' registrations: %s", exc)
            return
        served = {q for w in workers for q in (w.get("queues") or [])}
        for queue, n_units in sorted(per_queue.items()):
            if queue not in served:
                start = "gamma-lab worker" + (" --queue gpu --device cuda:0" if queue == "gpu" else "")
                log.warning(
                    "no Celery worker consumes the %r queue now: the %d unit(s) wait in Redis until one "
                    "starts (`%s` on a machine with GAMMA_LAB_BROKER_URL set)",
                    queue,
                    n_units,
                    start,
                )
