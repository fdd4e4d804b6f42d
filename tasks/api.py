"""What the CLI and the dashboard call: submit, cancel, rerun, add_seeds, sweep_progress, and the
sweep's organization: rename, set_tags, set_notes, archive, restore, purge_plan, purge.

Every acting function takes `actor` (tasks.access.Actor; None = the CLI's local user): the launcher or
an admin alone may cancel, archive, restore, purge or edit a sweep (checked before anything changes,
tasks.access.NotAllowed otherwise), and each action that succeeded leaves a row in the audit trail
(storage.audit) naming who did it.

submit() validates (nothing is queued if the spec is wrong), records the sweep and its runs in the
registry as `queued`, packs the cells that need training into work units (tasks.planner) and hands
them to an executor:
  - "local": unit files in the data folder's queue, worker processes started as needed
    (tasks.local_queue) — the embedded default, no services needed;
  - "celery": one Celery task per unit on the `cpu` or `gpu` queue (tasks.celery_app).
A cell whose identity is already stored with a result (done/diverged) is linked to the new sweep and
reused, not retrained, unless `rerun=True`. Adaptive sweeps are driven in rounds by a detached
process (tasks.adaptive) so that they outlive the submitting command.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import ConfigError, RunConfig
from storage import audit
from storage.ownership import pid_alive
from storage.registry import Registry, RegistryError
from storage.settings import Settings
from tasks import cancel as cancel_flags
from tasks.access import Actor, local_actor, require, require_for_run
from tasks.executors import CeleryExecutor, LocalExecutor
from tasks.planner import Plan, device_class, memory_budget, pack
from tasks.spec import SweepSpec, validate_spec

log = logging.getLogger("gamma_lab.api")

EXECUTORS = ("local", "celery")
RESULT_STATUSES = ("done", "diverged")  # a stored result: reused by a re-launch
ACTIVE_STATUSES = ("queued", "running")
RETRY_STATUSES = ("failed", "cancelled", "lost")  # no result: a re-launch or a rerun trains them again


def _check_executor(executor: str, settings: Settings) -> None:
    if executor not in EXECUTORS:
        raise ConfigError("executor", f"must be one of {', '.join(EXECUTORS)} (got {executor!r})")
    if executor == "celery":
        if not settings.broker_url:
            raise ConfigError("executor", "celery needs a broker: set GAMMA_LAB_BROKER_URL=redis://host:port/0")
        _check_broker(settings.broker_url)


def _check_broker(url: str) -> None:
    """Refuse before anything is stored when the broker cannot be reached: the sweep and its runs
    were recorded `queued`, then sending the units failed, and those runs stayed queued for ever."""
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5).ping()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise ConfigError(
            "executor", f"cannot reach the broker {redact_url(url)} ({exc}); nothing was queued"
        ) from None


def redact_url(url: str) -> str:
    """The URL with its password hidden (redis://:secret@host -> redis://:**@host), for messages."""
    return re.sub(r"://([^:@/]*):[^@/]*@", r"://\1:**@", url)


def _check_device(executor: str, device: str | None, *, launched_on: str | None = None) -> None:
    """A CUDA device for local workers must exist here: `--device cuda` on a laptop queued every
    run, and every run failed at once with a torch error. `launched_on`: the sweep whose stored
    launch device this is (a rerun or added seeds without --device), named in the message."""
    device = device or _default_device(executor)
    if device_class(device) != "cuda" or executor != "local":
        return  # Celery: the GPU workers are on other machines
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    name = f"{device} (sweep {launched_on} was launched on it)" if launched_on else device
    hint = (
        "pass --device cpu to train here"
        if launched_on
        else "use --device cpu, or --executor celery for the lab's GPU workers"
    )
    if n == 0:
        raise ConfigError(
            "device", f"{name}: no CUDA GPU is visible on this machine, where local workers train; {hint}"
        )
    if index >= n:
        raise ConfigError("device", f"{name}: this machine has {n} GPU(s), cuda:0 to cuda:{n - 1}")


def _default_device(executor: str) -> str:
    # Local workers run where the submitter is; a Celery sweep goes to the GPU queue when asked.
    return os.environ.get("GAMMA_LAB_DEVICE", "cpu")


def dispatch(
    settings: Settings,
    configs: Sequence[RunConfig],
    attempts: dict[str, int],
    *,
    executor: str,
    sweep_id: str | None,
    device: str | None = None,
) -> Plan:
    """Pack `configs` into units and hand them to the executor. Cancel flags of these runs are lowered."""
    device = device or _default_device(executor)
    device_class(device)
    if not configs:
        return Plan()
    cancel_flags.clear(settings, [c.run_id for c in configs])
    parallelism = settings.workers if executor == "local" else 1
    budget, source = memory_budget(settings, device)
    plan = pack(configs, device=device, attempts=attempts, sweep_id=sweep_id, parallelism=parallelism,
                memory_budget=budget)
    if plan.memory_note:  # `sweep` prints warnings: say why there are more units than workers
        log.warning("%s; the budget is %s", plan.memory_note, source)
    if executor == "local":
        LocalExecutor(settings).submit(plan.units)
    else:
        CeleryExecutor(settings).submit(plan.units, plan.max_unit_seconds)
    return plan


def submit(
    spec: SweepSpec,
    settings: Settings,
    executor: str = "local",
    owner: str | None = None,
    rerun: bool = False,
    device: str | None = None,
    actor: Actor | None = None,
) -> str:
    """Validate, record and queue a sweep. Returns the sweep id. Raises SpecError/ConfigError before
    anything is stored when the spec or the executor is wrong. `owner` defaults to the actor."""
    actor = actor or local_actor(settings)
    _check_executor(executor, settings)
    _check_device(executor, device)
    device = device or _default_device(executor)  # stored: reruns and added seeds go back to it
    for warning in validate_spec(spec, settings):
        log.warning("%s", warning)
    owner = owner or actor.name
    settings.ensure_dirs()
    with Registry(settings.registry_url) as reg:
        sweep_id = reg.create_sweep(spec.name, owner, spec.to_dict(), executor=executor, device=device)
    if spec.grid.adaptive:
        start_adaptive(settings, sweep_id, executor=executor, rerun=rerun, device=device)
    else:
        queue_cells(settings, sweep_id, spec.cells(), executor=executor, rerun=rerun, device=device)
    _audit(settings, actor, "launch", sweep_id, f"{spec.name!r} as {owner}, {executor} on {device}")
    return sweep_id


def _audit(settings: Settings, actor: Actor, action: str, target: str, detail: str = "") -> None:
    with Registry(settings.registry_url) as reg:
        audit.record(reg, actor.name, action, target, detail)


def _require_target(reg: Registry, actor: Actor, sweep_or_run_id: str, action: str) -> None:
    """NotAllowed unless `actor` may take `action` on this sweep, or on this run (a run: the actor
    launched some sweep holding it). An unknown id is left to the caller's own error."""
    if not actor.enforced or actor.is_admin:
        return
    sweep = reg.get_sweep(sweep_or_run_id)
    if sweep is not None:
        require(actor, sweep, action)
    elif reg.get_run(sweep_or_run_id) is not None:
        holders = [s for sid in reg.sweeps_of_run(sweep_or_run_id) if (s := reg.get_sweep(sid)) is not None]
        require_for_run(actor, sweep_or_run_id, holders, action)


def queue_cells(
    settings: Settings,
    sweep_id: str,
    cells: Sequence[RunConfig],
    *,
    executor: str,
    rerun: bool = False,
    device: str | None = None,
) -> list[str]:
    """Link `cells` to the sweep and queue those that need training. Returns their run ids."""
    with Registry(settings.registry_url) as reg:
        added = reg.add_runs(sweep_id, cells)
        attempts = {rid: 0 for rid in added.new}
        if added.existing:
            rows = reg.get_runs(added.existing)
            # effective status: a cell whose rerun was cancelled still has its finished result (reused)
            again = [
                r["run_id"]
                for r in rows
                if r["effective_status"] in RETRY_STATUSES or (rerun and r["effective_status"] in RESULT_STATUSES)
            ]
            attempts.update(reg.reset_for_rerun(again, sweep_id=sweep_id) if again else {})
    to_run = [c for c in cells if c.run_id in attempts]
    dispatch(settings, to_run, attempts, executor=executor, sweep_id=sweep_id, device=device)
    return [c.run_id for c in to_run]


def shared_active_runs(settings: Settings, sweep_or_run_id: str) -> dict[str, int]:
    """Other sweeps holding queued/running runs of this sweep (or this run): sweep_id -> count. A run
    belongs to every sweep that launched its cell, so cancelling it stops it for all of them — say so
    before (the dashboard) or when (the CLI) cancelling."""
    with Registry(settings.registry_url) as reg:
        ids = reg.run_ids_for(sweep_or_run_id)
        active = [r["run_id"] for r in reg.get_runs(ids) if r["status"] in ACTIVE_STATUSES]
        besides = sweep_or_run_id if reg.get_sweep(sweep_or_run_id) is not None else None
        return reg.sweeps_sharing(active, besides=besides) if active else {}


def cancel(settings: Settings, sweep_or_run_id: str, actor: Actor | None = None) -> int:
    """Cooperative cancel: queued runs become cancelled at once, running ones stop at their next flush.
    Returns how many runs were asked to stop (shared runs stop for every sweep holding them:
    shared_active_runs tells which). Only the launcher or an admin (NotAllowed, nothing changed)."""
    actor = actor or local_actor(settings)
    with Registry(settings.registry_url) as reg:
        _require_target(reg, actor, sweep_or_run_id, "cancel")
        ids = reg.run_ids_for(sweep_or_run_id)
        active = [r["run_id"] for r in reg.get_runs(ids) if r["status"] in ACTIVE_STATUSES]
        cancel_flags.request(settings, active)  # what the workers poll
        n = reg.request_cancel(sweep_or_run_id)  # what the dashboard shows
    stop_adaptive(settings, sweep_or_run_id)
    if active:
        LocalExecutor(settings).forget(set(active))
    _audit(settings, actor, "cancel", sweep_or_run_id, f"{n} run(s) asked to stop")
    return n


def relaunch_target(settings: Settings, sweep: dict[str, Any] | None, device: str | None) -> tuple[str, str]:
    """Executor and device for more work on a stored sweep (a rerun, added seeds): the sweep's own
    executor (local when it was Celery and this process has no broker) and, unless `device` is given,
    the device it was launched on — a GPU sweep's rerun went to the cpu queue, where a GPU-only lab
    has no worker, and sat queued for ever. Raises ConfigError for a CUDA device local workers lack
    or a broker that does not answer."""
    executor = (sweep or {}).get("executor", "local")
    if executor == "celery" and not settings.broker_url:
        executor = "local"
    if executor == "celery" and settings.broker_url:  # else the runs were reset or stored, then sending
        _check_broker(settings.broker_url)  # them failed: queued for ever
    if device is None and sweep is not None:
        _check_device(executor, sweep["device"], launched_on=sweep["id"])
        return executor, str(sweep["device"])
    _check_device(executor, device)
    return executor, device or _default_device(executor)


def rerun(
    settings: Settings,
    sweep_or_run_id: str,
    *,
    everything: bool = False,
    device: str | None = None,
    actor: Actor | None = None,
) -> list[str]:
    """Train again, as a new attempt, the runs without a result (failed, cancelled, lost) of a sweep,
    or the one run named (whatever its result), or with `everything` every finished run.
    `device=None`: the sweep's launch device (for a run, that of the sweep it joined last).
    Returns the run ids queued. Anyone may (audited)."""
    actor = actor or local_actor(settings)
    with Registry(settings.registry_url) as reg:
        ids = reg.run_ids_for(sweep_or_run_id)
        # a sweep's runs with their status as that sweep reads it: another sweep's cancelled rerun of a
        # finished run is not this sweep's to retry (storage.registry.SWEEP_STATUS)
        rows = reg.list_runs(sweep_or_run_id) if reg.get_sweep(sweep_or_run_id) is not None else reg.get_runs(ids)
        single = len(rows) == 1 and rows[0]["run_id"] == sweep_or_run_id
        allowed = RETRY_STATUSES + (RESULT_STATUSES if (single or everything) else ())
        again = [r for r in rows if r["effective_status"] in allowed]
        sweeps = reg.sweeps_of_run(again[0]["run_id"]) if again else []
        sweep_id = sweep_or_run_id if not single else (sweeps[0] if sweeps else None)
        sweep = reg.get_sweep(sweep_id) if sweep_id else None
        executor, device = relaunch_target(settings, sweep, device)  # before any run is reset
        attempts = reg.reset_for_rerun([r["run_id"] for r in again], sweep_id=sweep_id) if again else {}
    configs = [RunConfig.from_dict(r["config"]) for r in again]
    dispatch(settings, configs, attempts, executor=executor, sweep_id=sweep_id, device=device)
    _audit(settings, actor, "rerun", sweep_or_run_id, f"{len(configs)} run(s) queued again on {device}")
    return [c.run_id for c in configs]


def add_seeds(
    settings: Settings, sweep_id: str, seeds: Iterable[int], device: str | None = None, actor: Actor | None = None
) -> list[str]:
    """Add seeds to every (γ, η) of a sweep (the cells it already has), on the sweep's launch device
    unless `device` is given. Returns the run ids queued. Anyone may (audited)."""
    actor = actor or local_actor(settings)
    if isinstance(seeds, Sized) and len(seeds) > settings.max_cells:  # before a set of 10^7 seeds is built
        raise ConfigError("grid", f"{len(seeds):,} seeds to add; at most max_cells={settings.max_cells} cells")
    seeds = sorted(set(seeds))
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**31 for s in seeds):
        raise ConfigError("grid.seeds", "must be integers in [0, 2^31-1]")
    with Registry(settings.registry_url) as reg:
        sweep = reg.get_sweep(sweep_id)
        if sweep is None:
            raise ConfigError("sweep", f"no sweep {sweep_id!r}")
        rows = reg.list_runs(sweep_id)
    executor, device = relaunch_target(settings, sweep, device)
    spec = SweepSpec.from_dict(sweep["spec"])
    pairs = sorted({(r["gamma"], r["eta"]) for r in rows}) or [(g, e) for g in spec.grid.gammas for e in spec.grid.etas]
    have = {r["seed"] for r in rows}
    # counted from the sizes before any cell is built (a 10^7-cell request took minutes and gigabytes)
    n_seeds = len(have | set(seeds))
    if len(pairs) * n_seeds > settings.max_cells:
        raise ConfigError(
            "grid",
            f"{len(pairs):,} (γ, η) pairs × {n_seeds:,} seeds = {len(pairs) * n_seeds:,} cells; at most "
            f"max_cells={settings.max_cells} allowed",
        )
    cells = [spec.cell(g, e, s) for g, e in pairs for s in seeds]
    queued = queue_cells(settings, sweep_id, cells, executor=executor, device=device)
    detail = f"{len(seeds)} seed(s) {seeds[0]}..{seeds[-1]}: {len(queued)} run(s) queued"
    _audit(settings, actor, "add-seeds", sweep_id, detail)
    return queued


def sweep_progress(settings: Settings, sweep_id: str) -> dict[str, int]:
    """Run counts per status (every status present, zeros included)."""
    with Registry(settings.registry_url) as reg:
        sweep = reg.get_sweep(sweep_id)
    if sweep is None:
        raise ConfigError("sweep", f"no sweep {sweep_id!r}")
    return dict(sweep["counts"])


def is_settled(settings: Settings, sweep_id: str) -> bool:
    """No run queued or running and no adaptive round still to come."""
    counts = sweep_progress(settings, sweep_id)
    return not any(counts.get(s, 0) for s in ACTIVE_STATUSES) and not adaptive_active(settings, sweep_id)


# ----------------------------------------------------------------------------- organization

NAME_MAX, TAGS_MAX, TAG_MAX, NOTES_MAX = 200, 20, 40, 10_000
_TAG = re.compile(r"[A-Za-z0-9_.:-]+")


def check_name(name: Any) -> str:
    """A sweep's name: 1-200 printable characters (surrounding spaces dropped)."""
    text = name.strip() if isinstance(name, str) else ""
    if not 1 <= len(text) <= NAME_MAX or not text.isprintable():
        raise ConfigError("name", f"must be 1-{NAME_MAX} printable characters, no line breaks (got {name!r})")
    return text


def check_tags(tags: Any) -> list[str]:
    """Up to 20 tags, each 1-40 letters, digits or - _ . : (repeats dropped, order kept)."""
    if isinstance(tags, str) or not isinstance(tags, Iterable):
        raise ConfigError("tags", f"must be a list of tags (got {tags!r})")
    out: list[str] = []
    for tag in tags:
        text = tag.strip() if isinstance(tag, str) else tag
        if not isinstance(text, str) or len(text) > TAG_MAX or not _TAG.fullmatch(text):
            raise ConfigError("tags", f"each tag must be 1-{TAG_MAX} letters, digits or - _ . : (got {tag!r})")
        if text not in out:
            out.append(text)
    if len(out) > TAGS_MAX:
        raise ConfigError("tags", f"at most {TAGS_MAX} tags per sweep (got {len(out)})")
    return out


def check_notes(notes: Any) -> str:
    """Notes: text of up to 10,000 characters; line breaks and tabs allowed, other control characters not."""
    if not isinstance(notes, str):
        raise ConfigError("notes", f"must be text (got {type(notes).__name__})")
    if len(notes) > NOTES_MAX:
        raise ConfigError("notes", f"at most {NOTES_MAX:,} characters (got {len(notes):,})")
    bad = next((i for i, ch in enumerate(notes) if not ch.isprintable() and ch not in "\n\r\t"), None)
    if bad is not None:
        raise ConfigError("notes", f"must not contain control characters (got {notes[bad]!r} at position {bad})")
    return notes


def _edit(settings: Settings, sweep_id: str, action: str, actor: Actor | None, detail: str, **values: Any) -> None:
    """Check who acts, change the sweep, record it in the audit trail."""
    actor = actor or local_actor(settings)
    with Registry(settings.registry_url) as reg:
        sweep = reg.get_sweep(sweep_id)
        if sweep is None:
            raise ConfigError("sweep", f"no sweep {sweep_id!r}")
        require(actor, sweep, action)
        reg.update_sweep(sweep_id, **values)
        audit.record(reg, actor.name, action, sweep_id, detail)


def rename(settings: Settings, sweep_id: str, name: str, actor: Actor | None = None) -> None:
    """Give a sweep a new name (the launcher or an admin)."""
    name = check_name(name)
    _edit(settings, sweep_id, "rename", actor, f"name {name!r}", name=name)


def set_tags(settings: Settings, sweep_id: str, tags: list[str], actor: Actor | None = None) -> None:
    """Replace a sweep's tags (the launcher or an admin)."""
    tags = check_tags(tags)
    _edit(settings, sweep_id, "tags", actor, f"tags {', '.join(tags) or '(none)'}", tags=tags)


def set_notes(settings: Settings, sweep_id: str, notes: str, actor: Actor | None = None) -> None:
    """Replace a sweep's notes (the launcher or an admin)."""
    notes = check_notes(notes)
    _edit(settings, sweep_id, "notes", actor, f"notes of {len(notes)} character(s)", notes=notes or None)


def archive(settings: Settings, sweep_id: str, actor: Actor | None = None) -> None:
    """Hide a sweep from lists (restorable; its runs and points stay). The launcher or an admin."""
    _edit(settings, sweep_id, "archive", actor, "", archived=time.time())


def restore(settings: Settings, sweep_id: str, actor: Actor | None = None) -> None:
    """Show an archived sweep in lists again. The launcher or an admin."""
    _edit(settings, sweep_id, "restore", actor, "", archived=None)


@dataclass(frozen=True)
class PurgePlan:
    """What a purge of a sweep deletes: the runs no other sweep holds (their registry rows and every
    point), and what it keeps: shared runs (run id -> the other sweeps holding it). `points`: None
    when the recorder holding the metrics file did not answer in time (the deletion is then pending
    on the bus: the next recorder does it)."""

    sweep_id: str
    name: str
    runs_deleted: list[str] = field(default_factory=list)
    runs_kept: dict[str, list[str]] = field(default_factory=dict)
    points: int | None = None


def purge_plan(settings: Settings, sweep_id: str) -> PurgePlan:
    """What purge(sweep_id) would delete and keep; changes nothing (ConfigError for an unknown sweep)."""
    from storage.purge import count_points

    with Registry(settings.registry_url) as reg:
        sweep = reg.get_sweep(sweep_id)
        if sweep is None:
            raise ConfigError("sweep", f"no sweep {sweep_id!r}")
        deleted, kept = reg.purge_split(sweep_id)
    return PurgePlan(sweep_id, sweep["name"], deleted, kept, count_points(settings, deleted))


def purge(settings: Settings, sweep_id: str, *, confirm: str, actor: Actor | None = None) -> PurgePlan:
    """Delete a sweep for good: its row, its links, the runs no other sweep holds and their points
    (through the recorder, the metrics file's one writer: storage.purge); shared runs stay. `confirm`
    must be the sweep's id (the user typed it). The launcher or an admin; refused while any of its
    runs is queued or running (nothing changed). Returns what went; audited with the counts."""
    from storage.purge import delete_points

    actor = actor or local_actor(settings)
    with Registry(settings.registry_url) as reg:
        sweep = reg.get_sweep(sweep_id)
        if sweep is None:
            raise ConfigError("sweep", f"no sweep {sweep_id!r}")
        require(actor, sweep, "purge")
        if adaptive_active(settings, sweep_id):  # its driver would queue the next round into a deleted sweep
            raise ConfigError("sweep", f"sweep {sweep_id} has adaptive rounds still to come; cancel it first")
        if str(confirm).strip() != sweep_id:
            raise ConfigError("confirm", f"type the sweep id {sweep_id} to purge it (got {confirm!r}); nothing deleted")
        try:
            deleted, kept = reg.purge_sweep(sweep_id)
        except RegistryError as exc:  # runs still queued or running
            raise ConfigError("sweep", str(exc).removeprefix("sweep: ")) from None
    points = None
    try:
        points = delete_points(settings, deleted)
    finally:
        said = "not confirmed (no recorder answered; the request waits on the bus)" if points is None else str(points)
        _audit(settings, actor, "purge", sweep_id,
               f"{sweep['name']!r}: {len(deleted)} run(s) deleted, {len(kept)} shared run(s) kept, points {said}")
    return PurgePlan(sweep_id, sweep["name"], deleted, kept, points)


# ----------------------------------------------------------------------------- adaptive driver process


def _driver_file(settings: Settings, sweep_id: str) -> Path:
    return Path(settings.data_dir) / "adaptive" / f"{sweep_id}.pid"


def start_adaptive(settings: Settings, sweep_id: str, *, executor: str, rerun: bool, device: str | None) -> int:
    """Start the detached round driver (tasks.adaptive) for a sweep. Returns its pid."""
    path = _driver_file(settings, sweep_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "tasks.adaptive", sweep_id, "--executor", executor]
    if rerun:
        args.append("--rerun")
    if device:
        args += ["--device", device]
    env = dict(os.environ, GAMMA_LAB_DATA=str(settings.data_dir))
    with open(path.with_suffix(".log"), "ab") as logfile:
        proc = subprocess.Popen(
            args, env=env, stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    path.write_text(str(proc.pid))  # the driver removes it when done
    return proc.pid


def adaptive_active(settings: Settings, sweep_id: str) -> bool:
    path = _driver_file(settings, sweep_id)
    try:
        pid = int(path.read_text())
    except (OSError, ValueError):
        return False
    return pid_alive(pid)


def stop_adaptive(settings: Settings, sweep_or_run_id: str) -> None:
    """A cancelled adaptive sweep queues no further rounds (the driver sees the flag file)."""
    path = _driver_file(settings, sweep_or_run_id)
    if path.exists():
        path.with_suffix(".stop").touch()

