"""A local worker process (embedded mode): `python -m tasks.local_worker`.

Claims units from the data folder's queue until it is empty, trains each, publishes events to the
spool bus, then exits. Started by tasks.local_queue.ensure_workers (or start_early: `gamma-lab
sweep` starts one before it queues, and it waits for its first unit); safe to start by hand too.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from storage.bus import open_publisher
from storage.logs import configure_logging
from storage.settings import Settings, load_settings
from tasks import local_queue
from tasks.planner import measured_throughput, record_throughput, record_unit
from tasks.worker import run_unit, set_torch_threads

log = logging.getLogger("gamma_lab.local_worker")


def process_age() -> float:
    """Seconds since this process started (the kernel's start time; 0 without /proc)."""
    try:
        with open("/proc/self/stat", "rb") as fh:
            start_ticks = int(fh.read().rsplit(b")", 1)[1].split()[19])
        with open("/proc/uptime", "rb") as fh:
            uptime = float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


def calibrate(settings: Settings) -> None:
    """A warm worker on a data folder whose workers measured nothing yet trains a small ensemble once
    (well under a second on a quiet laptop), so that the first launch's estimate is this machine's:
    the constant rate is hundreds of times off for the small models a first launch trains."""
    if measured_throughput(settings.data_dir, "cpu").rate is not None:
        return
    from engine.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from engine.trainer import train_ensemble

    # with the costly metrics at a few eval points, as the Launch presets record them: their cost is
    # most of a small unit's (alignment and sharpness on a probe batch), so the rate must include it
    train = TrainConfig(steps=100, batch_size=32, eval_points=4, metrics=("test", "alignment", "sharpness", "movement"))
    data = DataConfig(dataset="teacher", input_dim=40, n_classes=10)
    configs = [RunConfig(model=ModelConfig(width=32, depth=3), data=data, train=train, gamma=1.0, eta=0.01, seed=s)
               for s in range(4)]
    first: list[tuple[float, int]] = []
    began = time.monotonic()
    try:
        train_ensemble(configs, device="cpu", data_root=settings.data_dir, flush_every=10,
                       on_progress=lambda steps, _n: first.append((time.monotonic(), steps)) if not first else None)
    except Exception as exc:  # noqa: BLE001 - a calibration that fails only leaves the constants in use
        log.warning("could not measure this machine's throughput: %s", exc)
        return
    record_unit(settings.data_dir, "cpu", configs, began=began, first=first[0] if first else None,
                ended=time.monotonic(), steps=train.steps)


def serve(settings=None, *, keep_lock_on_exit: bool = False) -> int:  # type: ignore[no-untyped-def]
    """Work until the queue is empty. Returns the number of units trained.

    Registers first (the launcher that started it waits for that under the queue lock); before each
    claim it supervises (tasks.local_queue.supervise: recovers a dead sibling's unit, starts a
    replacement); with the queue empty it leaves under the lock, or stays when work arrived meanwhile
    and fewer than GAMMA_LAB_WORKERS workers are alive. `keep_lock_on_exit` (the worker process):
    leaving keeps the lock until the process is gone, so the configured count holds.
    A warm worker (local_queue.warm_up: the dashboard's) first waits for work with torch imported."""
    settings = settings or load_settings()
    registration = local_queue.register(settings)
    set_torch_threads(None)
    publisher = open_publisher(settings)
    idle_s, parent = local_queue.warm_settings()
    early_s, launcher = local_queue.early_settings()  # started before its launch queued anything
    early_until = time.monotonic() + early_s
    import engine.trainer  # noqa: F401 - torch and the models: a warm worker has them before the first unit

    # what a cold start costs here (process, imports): the Launch page's estimate (tasks.planner)
    age = process_age()
    record_throughput(settings.data_dir, "cpu", 0.0, 0.0, cold_start_s=age)
    now = time.time()  # wall-clock times in the record: bench/end_to_end.py breaks a sweep's time down
    log.info("worker ready %.2f s after its start (interpreter, torch and engine imports)", age,
             extra={"process_start": now - age, "ready": now})
    if idle_s > 0:
        calibrate(settings)
    done = 0
    try:
        while True:
            for line in local_queue.supervise(settings).lines():
                log.warning("%s", line)
            item = local_queue.claim(settings)
            if item is None and idle_s > 0 and local_queue.wait_for_work(settings, idle_s, parent):
                continue  # a unit arrived while this worker waited warm
            if (item is None and not done and (left := early_until - time.monotonic()) > 0
                    and local_queue.wait_for_work(settings, left, launcher, local_queue.EARLY_POLL_S)):
                continue  # its launch queued the first unit
            if item is None:
                with local_queue.worker_exit_check(
                    settings, registration, settings.workers, keep=keep_lock_on_exit
                ) as stay:
                    pass
                if stay:
                    continue
                break
            path, text = item
            try:
                began = time.time()
                run_unit(text, settings, publisher)
                done += 1
                log.info("unit %s trained in %.2f s (data, model, training, events)", path.name,
                         time.time() - began,
                         extra={"unit_began": began, "unit_ended": time.time(), "cpu_s": time.process_time()})
            except Exception:  # a unit that cannot even be read: logged, the queue goes on
                log.exception("unit %s could not run", path.name)
            finally:
                local_queue.release(path)
    finally:
        local_queue.release(registration)
        close = getattr(publisher, "close", None)
        if callable(close):
            close()
    return done


def main() -> int:
    settings = load_settings()
    # text in embedded mode (GAMMA_LAB_LOG_FORMAT=json for JSON lines); JSON when a broker is set
    configure_logging(settings.broker_url, level=logging.INFO)
    serve(settings, keep_lock_on_exit=True)
    # Leave now: the queue lock is held until this process is gone (see serve), so interpreter
    # teardown (torch's) must not keep every launch waiting.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
