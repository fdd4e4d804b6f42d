"""The work behind `gamma-lab sweep --wait`, `demo`, `rerun --wait` and the catch-up of `status`,
`cancel`, `rerun` and `export`: what submitting did to the cells, the wait loop with its progress bar
(recording meanwhile when no other process does), the local workers' supervision, and recording the
events waiting on the bus. app.cli parses and dispatches.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.cli import EXIT_INTERRUPTED, EXIT_UNFINISHED, UserError, _err
from storage.settings import Settings


def stored_statuses(settings: Settings, spec: Any) -> dict[str, str]:
    """run_id -> status of the spec's cells the registry already holds (before submitting)."""
    from storage.registry import Registry

    url = settings.registry_url
    if spec.grid.adaptive or (url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists()):
        return {}  # adaptive: cells are chosen round by round; no registry file yet: nothing stored
    with Registry(settings.registry_url) as reg:
        return {r["run_id"]: r["effective_status"] for r in reg.get_runs([c.run_id for c in spec.cells()])}


def describe_cells(spec: Any, before: dict[str, str], rerun: bool) -> str:
    """What submitting did to the cells. A re-launched spec said "15 cells queued" when every cell
    was reused from an earlier sweep and nothing trained; the user thought it had trained again."""
    n = spec.grid.n_cells
    if spec.grid.adaptive:
        return f"adaptive, up to {n} cells queued round by round (η_max per γ first)"
    reused = 0 if rerun else sum(s in ("done", "diverged") for s in before.values())
    shared = sum(s in ("queued", "running") for s in before.values())
    if not reused and not shared:
        return f"{n} cells queued"
    parts = [f"{n - reused - shared} queued"]
    if reused:
        parts.append(f"{reused} reused from earlier sweeps (--rerun trains them again)")
    if shared:
        parts.append(f"{shared} already being trained for another sweep")
    return f"{n} cells: " + ", ".join(parts)


def wait_interruptible(settings: Settings, sweep_ids: Sequence[str], recorder: Any) -> int:
    """wait_for each sweep (the worst exit code), but Ctrl-C stops only the waiting: the runs go on
    (local workers and Celery tasks outlive this command), so say so and how to follow or stop them.
    A user who pressed Ctrl-C saw the bar vanish without a word and thought the sweep was stopped."""
    code = 0
    try:
        for sweep_id in sweep_ids:
            code = max(code, wait_for(settings, sweep_id, recorder=recorder))
            recorder = None  # wait_for stopped it; the next wait_for records again if it can
    except KeyboardInterrupt:
        for sweep_id in sweep_ids:
            _err(
                f"stopped waiting; sweep {sweep_id} keeps running in the background "
                f"(`gamma-lab status {sweep_id}` to follow it, `gamma-lab cancel {sweep_id}` to stop it)"
            )
        return EXIT_INTERRUPTED
    return code


def check_store(settings: Settings) -> None:
    """Raise StoreCorrupt before queueing when the metric store is unreadable (unless another process
    holds it: then it is readable). Runs queued anyway could never be recorded."""
    from storage.recorder import Recorder, RecorderBusy

    try:
        Recorder(settings).close()
    except RecorderBusy:
        pass


def store_absent(settings: Settings) -> bool:
    """Embedded mode, and no metrics file in the data folder yet (nor its WAL or damage marker):
    nothing stored there that a broken store could lose, so `sweep` needs no check of it before
    queueing, and opening it (DuckDB, NumPy, PyArrow, the recorder: 0.1-0.2 s of the CLI's start-up)
    waits until the units are queued and the worker trains. Anything else there, unreadable included,
    or a broker: False, and the store is opened before queueing as always."""
    if settings.broker_url:
        return False
    path = str(settings.metrics_path)
    for name in (path, f"{path}.wal", f"{path}.damaged"):
        try:
            os.lstat(name)
        except FileNotFoundError:
            continue
        except OSError:
            pass  # not even its name can be looked at: the store's own open says what is wrong
        return False
    return True


def recorder_for_wait(settings: Settings) -> Any:
    """The recorder this process runs while it waits, or None when another process records.
    Raises StoreCorrupt (a clear message, nothing queued yet) when the metric store is unreadable."""
    from storage.recorder import start_if_free

    return start_if_free(settings)


WAKE_S = 0.02  # how often wait_for's nap looks whether this process's recorder stored something


def nap(recorder: Any, poll_s: float) -> None:
    """Sleep up to poll_s, but wake within WAKE_S once this process's recorder has stored new events
    (the runs' ends among them): the fixed 0.5 s poll added a quarter of a second on average to every
    sweep's end (bench/end_to_end.py). Reading the recorder's counter costs nothing; the registry is
    queried only when there is news or poll_s has passed."""
    stats = getattr(recorder, "stats", None)
    seen = stats.get("events") if isinstance(stats, dict) else None
    deadline = time.monotonic() + poll_s
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(WAKE_S, left))
        if seen is not None and stats is not None and stats.get("events") != seen:
            return


def wait_for(settings: Settings, sweep_id: str, poll_s: float = 0.5, recorder: Any = None) -> int:
    """Progress bar until every run ended. 0 when all are done or diverged. `recorder`: one already
    started by the caller (else one is started here if no other process records)."""
    from tqdm import tqdm

    from storage.recorder import start_if_free
    from storage.registry import Registry
    from tasks import api

    logging.getLogger("storage.recorder").setLevel(logging.INFO)  # "handed recording over to pid N"
    if recorder is None:
        recorder = start_if_free(settings)
    # one registry for the whole wait: a new one per poll (its engine, the schema check under SQLite's
    # write lock, every statement compiled anew) was most of the loop's CPU beside the training
    live = None if recorder is None else LiveSteps(recorder)
    with Registry(settings.registry_url) as registry:
        full_since: float | None = None  # when this process's recorder found the data folder full
        disk_full = None
        counts, done, total = steps_progress(settings, sweep_id, _live_store(recorder), registry, _live_steps(live))
        # in steps trained, not runs ended: a one-unit sweep sat at 0 % with a growing ETA until its end
        bar = tqdm(total=max(total, 1), initial=done, file=sys.stderr, unit="step", desc=sweep_id, leave=True)
        watch = WorkerWatch(settings, lambda line: bar.write(line, file=sys.stderr))  # a killed local worker
        try:
            while True:
                counts, done, total = steps_progress(
                    settings, sweep_id, _live_store(recorder), registry, _live_steps(live)
                )
                bar.total = max(total, 1)
                if done != bar.n:
                    bar.update(done - bar.n)  # through update(): tqdm's smoothed rate, hence its ETA
                bar.set_postfix({k: v for k, v in counts.items() if v}, refresh=True)
                active = counts.get("queued", 0) + counts.get("running", 0)
                if total and not active and not api.adaptive_active(settings, sweep_id):  # api.is_settled
                    break
                if recorder is not None and recorder.store_damaged is not None:
                    raise recorder.store_damaged  # one line (main); the events wait unacknowledged on the bus
                if recorder is not None and recorder.disk_full is not None:
                    # its running runs are failed with the reason; queued ones fail in their worker: wait for
                    # that a little (the registry may be unable to write), then stop waiting with the line
                    disk_full = recorder.disk_full
                    full_since = full_since or time.monotonic()
                    if time.monotonic() - full_since > settings.lost_after_s + 5:
                        break
                if recorder is not None and recorder.handed_over_to is not None:
                    recorder = None  # it yielded to a dashboard, whose recorder now updates the statuses
                if recorder is None:  # the recorder elsewhere may have stopped: take over if we can
                    recorder = start_if_free(settings)
                watch.check()
                nap(recorder, poll_s)
        finally:
            bar.close()
            if recorder is not None:
                recorder.stop()
    counts = api.sweep_progress(settings, sweep_id)
    bad = {k: v for k, v in counts.items() if v and k not in ("done", "diverged")}
    why = _why_failed(settings, sweep_id) if bad else ""
    if bad:
        _err(f"sweep {sweep_id} ended with " + ", ".join(f"{v} {k}" for k, v in bad.items()) + why)
    if disk_full is not None and str(disk_full) not in why:
        _err(f"error: {disk_full}")
    return EXIT_UNFINISHED if bad or disk_full is not None else 0


def _live_store(recorder: Any) -> Any:
    """This process's metric store while its recorder records (readers beside it are safe), else None:
    another process's store is never opened here (a reader would block that recorder)."""
    if recorder is None or recorder.handed_over_to is not None or recorder.store_damaged is not None:
        return None
    return getattr(recorder, "store", None)


class LiveSteps:
    """The running runs' last train_loss steps as this process's recorder stores their points
    (Recorder.last_steps): an attempt whose start it applied has no points but those it stored; any
    other attempt (one that started before this recorder, under the dashboard's, say) is asked of the
    store once, and its later points come through the recorder."""

    def __init__(self, recorder: Any):
        self.recorder = recorder
        self.asked: dict[tuple[str, int], int] = {}  # the store's answer for the attempts it was asked

    def last(self, store: Any, registry: Any, running: list[tuple[str, int]]) -> dict[str, int]:
        rec = self.recorder
        unknown = [key for key in running if key not in rec.seen_started and key not in self.asked]
        if unknown:
            stored = _stored_last_steps(store, registry, [r for r, _ in unknown])
            self.asked.update({key: stored.get(key[0], -1) for key in unknown})
        out = {}
        for key in running:
            step = max(rec.last_steps.get(key, -1), self.asked.get(key, -1))
            if step >= 0:
                out[key[0]] = step
        return out


def _live_steps(live: LiveSteps | None) -> LiveSteps | None:
    """live while its recorder records here (else None: the store is another process's)."""
    return None if live is None or _live_store(live.recorder) is None else live


def steps_progress(
    settings: Settings,
    sweep_id: str,
    store: Any = None,
    registry: Any = None,
    live: LiveSteps | None = None,
) -> tuple[dict[str, int], int, int]:
    """(runs per status as the sweep reads them, steps done, total steps) for the progress bar. Total:
    runs × the spec's steps. Done: every step of the runs that ended (done, diverged, failed, cancelled,
    lost), plus, given `store`, each running run's last logged step + 1 (storage.progress.last_step_of:
    one query); without it running runs count 0 (run counts, the fallback). `live`: this process's
    recorder's steps (LiveSteps), read instead of that query. `registry`: an open one (wait_for's),
    else one is opened for this call."""
    from storage.registry import Registry, runs_columns

    with contextlib.nullcontext(registry) if registry is not None else Registry(settings.registry_url) as reg:
        sweep = reg.get_sweep(sweep_id)
        if sweep is None:
            raise UserError(f"no sweep {sweep_id!r}")
        counts = dict(sweep["counts"])
        per_run = max(1, int((sweep["spec"].get("train") or {}).get("steps") or 1))
        ended = sum(counts.values()) - counts.get("queued", 0) - counts.get("running", 0)
        done = ended * per_run
        if counts.get("running") and store is not None:
            # a sweep reads a queued or running run by its current attempt, as last_steps does
            cols = runs_columns(reg, sweep_id=sweep_id, fields=("run_id", "status", "attempt"))
            running = [(r, int(a)) for r, status, a in zip(cols["run_id"], cols["status"], cols["attempt"], strict=True)
                       if status == "running"]  # fmt: skip
            if live is not None:
                last = live.last(store, reg, running)  # this process stores them: no query twice a second
            else:
                last = _stored_last_steps(store, reg, [r for r, _ in running])
            done += sum(min(step + 1, per_run) for step in last.values())
    return counts, done, sum(counts.values()) * per_run


def _stored_last_steps(store: Any, registry: Any, run_ids: list[str]) -> dict[str, int]:
    """storage.progress.last_step_of on this process's store ({} when it closed meanwhile or is damaged:
    the recorder says)."""
    import duckdb  # the readers only here: while a dashboard records, this process never reads the store

    from storage.progress import last_step_of
    from storage.queries import QuerySource

    try:
        return last_step_of(QuerySource(store, registry), run_ids)
    except (RuntimeError, OSError, duckdb.Error):
        return {}


def _why_failed(settings: Settings, sweep_id: str) -> str:
    """': <reason>' of the sweep's failed runs (the most common first line of their errors), or ''."""
    from collections import Counter

    from storage.registry import Registry

    with Registry(settings.registry_url) as reg:
        errors = [(r.get("error") or "").strip() for r in reg.list_runs(sweep_id, status="failed")]
    first = Counter(e.splitlines()[0] for e in errors if e).most_common(1)
    return f": {first[0][0]}" if first else ""


class WorkerWatch:
    """Embedded mode's local workers, supervised by whoever is around (tasks.local_queue.supervise):
    a killed worker's unit is queued again as a new attempt (or its runs marked lost when it had
    killed a worker before) and workers are started for queued work that has none. Each line is said
    once: `sweep --wait` checks every couple of seconds, `status` and `rerun` once."""

    def __init__(self, settings: Settings, say: Any = None, every_s: float = 2.0):
        self.settings, self.say, self.every_s = settings, say or _err, every_s
        self.next_at = 0.0
        self.said: set[str] = set()

    def check(self) -> Any:
        if time.monotonic() < self.next_at:
            return None
        self.next_at = time.monotonic() + self.every_s
        from tasks import local_queue

        result = local_queue.supervise(self.settings)
        for line in result.lines():
            if line not in self.said:
                self.said.add(line)
                self.say(f"warning: {line}")
        return result


def catch_up(settings: Settings, timeout_s: float = 30.0, *, strict: bool = False) -> None:
    """Ingest the events waiting on the bus unless another process records (the dashboard, a
    `sweep --wait`). Without this, `status` and `export` after a plain `gamma-lab sweep` showed runs
    `queued` long after their workers had finished: nobody had recorded their events yet.
    A damaged metric store or a full data folder is one warning line (`strict`: raised instead)."""
    if (reason := settings.read_only_reason()) is not None:  # nothing can be recorded: show what is stored
        _err(
            f"note: the data folder {settings.data_dir} is read-only ({reason}): showing what it holds; "
            "events still waiting in it are not recorded"
        )
        return
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from storage.diskspace import DiskFull
    from storage.metric_store import StoreCorrupt
    from storage.recorder import Recorder, RecorderBusy

    try:
        with Recorder(settings) as recorder:
            recorder.drain(timeout_s=timeout_s)
    except RecorderBusy:
        pass
    except (StoreCorrupt, DiskFull) as exc:  # the registry may still be fine: say so and show what it holds
        if strict:
            raise
        _err(f"warning: {exc} (waiting events stay on the bus, unrecorded: run statuses may be out of date)")
    except (RedisConnectionError, RedisTimeoutError) as exc:  # the broker is down: the registry still answers
        from tasks.api import redact_url

        _err(
            f"warning: broker: cannot reach {redact_url(settings.broker_url or '')} ({exc})",
            "warning: waiting events were not recorded; run statuses may be out of date",
        )
