"""Who trains what: every worker, with its host, device, queue, last heartbeat and the runs it trains.

Read by `gamma-lab status --workers` and the dashboard's Workers page. Three sources, joined here:
- Celery workers register in the broker (tasks.celery_app.live_workers): node, host, device, queues,
  the pids of the processes that train, and `seen`, refreshed every few seconds: their heartbeat;
- local workers (embedded mode, or `--executor local` in a lab) are files in the data folder's queue
  (tasks.local_queue): a pid, and the unit it has claimed (its device);
- the registry's running runs name the process that trains them (`worker`: host:pid) and its last
  heartbeat. A running run whose process is neither is listed under that name too: a worker that
  stopped registering (killed, cut off) still holds runs until they turn lost.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage.registry import Registry
from storage.settings import Settings
from tasks import local_queue
from tasks.planner import WorkUnit


@dataclass
class WorkerRow:
    name: str  # the Celery node name, or host:pid for a local worker or an unregistered process
    host: str
    device: str
    queue: str
    pid: int | None
    heartbeat_age_s: float | None  # since its last sign of life; None: none known
    registered: bool  # False: known only from the runs it holds
    runs: list[dict[str, Any]] = field(default_factory=list)  # Registry.running_runs rows

    @property
    def state(self) -> str:
        busy = f"running {len(self.runs)} run(s)" if self.runs else "idle"
        return busy if self.registered else f"not registered, {busy}"


def celery_workers(settings: Settings) -> list[dict[str, Any]]:
    """The Celery workers registered in the broker now ([] in embedded mode). Raises redis's
    ConnectionError or TimeoutError when the broker does not answer."""
    if not settings.broker_url:
        return []
    from tasks.celery_app import live_workers

    return sorted(live_workers(settings.broker_url), key=lambda w: (w.get("host", ""), w.get("node", "")))


def _local_workers(settings: Settings) -> list[tuple[int, str]]:
    """(pid, device) of the local worker processes alive now; the device of the unit each has
    claimed, "-" when it has none. Nothing is created or pruned (a read-only folder reads too)."""
    queue = local_queue.queue_dir(settings)
    if not (queue / "workers").is_dir():
        return []
    claimed = queue / "claimed"
    devices = {}
    for path in claimed.glob("*.json") if claimed.is_dir() else []:
        pid = path.name.rsplit(".", 2)[-2]
        devices[pid] = _unit_device(path)
    return [(pid, devices.get(str(pid), "-")) for pid in sorted(local_queue.live_workers(settings, prune=False))]


def _unit_device(path: Path) -> str:
    try:
        return WorkUnit.from_json(path.read_text()).device
    except (OSError, ValueError, KeyError):  # released or being written meanwhile
        return "-"


def list_workers(
    settings: Settings, registered: list[dict[str, Any]], registry: Registry | None = None, now: float | None = None
) -> list[WorkerRow]:
    """One row per worker: the Celery workers `registered` (celery_workers), the local workers, then
    the processes that hold running runs without being either. `registry`: an open one to read."""
    now = time.time() if now is None else now
    rows: dict[str, WorkerRow] = {}  # keyed by every host:pid that trains for the row
    for w in registered:
        row = WorkerRow(
            name=str(w.get("node")),
            host=str(w.get("host")),
            device=str(w.get("device", "-")),
            queue=",".join(w.get("queues") or []) or "-",
            pid=w.get("pid"),
            heartbeat_age_s=max(0.0, now - float(w["seen"])) if w.get("seen") else None,
            registered=True,
        )
        for pid in w.get("pids") or [w.get("pid")]:
            rows[f"{row.host}:{pid}"] = row
    host = socket.gethostname()
    for pid, device in _local_workers(settings):
        rows[f"{host}:{pid}"] = WorkerRow(f"{host}:{pid}", host, device, "local", pid, None, True)
    for run in _running_runs(settings, registry):
        name = run["worker"] or "-"
        if name not in rows:
            h, _, pid = name.rpartition(":")
            rows[name] = WorkerRow(name, h or "-", "-", "-", int(pid) if pid.isdigit() else None, None, False)
        row = rows[name]
        row.runs.append(run)
        if run["heartbeat"] is not None and (row.queue == "local" or not row.registered):
            age = max(0.0, now - float(run["heartbeat"]))  # its runs' heartbeats are its only sign of life
            row.heartbeat_age_s = age if row.heartbeat_age_s is None else min(row.heartbeat_age_s, age)
    unique = {id(r): r for r in rows.values()}  # a prefork worker is keyed once per pool process
    return list(unique.values())


def _running_runs(settings: Settings, registry: Registry | None) -> list[dict[str, Any]]:
    if registry is not None:
        return registry.running_runs()
    with Registry(settings.registry_url) as reg:
        return reg.running_runs()


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.0f} s ago"


def run_label(run: dict[str, Any]) -> str:
    """One running run as the table lists it: id, sweep(s), γ, η, seed."""
    sweeps = ", ".join(run["sweeps"]) or "-"
    return f"{run['run_id']} (sweep {sweeps}) γ={run['gamma']:.4g} η={run['eta']:.4g} seed={run['seed']}"


def workers_table(rows: list[WorkerRow]) -> str:
    """The `status --workers` table: one line per worker, then one indented line per run it trains."""
    if not rows:
        return "no worker is running (embedded mode starts local workers for queued work; a lab: `gamma-lab worker`)"
    widths = (max(len("worker"), *(len(r.name) for r in rows)) + 2, max(len("host"), *(len(r.host) for r in rows)) + 2)
    lines = [f"{'worker':<{widths[0]}}{'host':<{widths[1]}}{'device':<8}{'queue':<8}{'pid':>8}  {'heartbeat':<11}state"]
    for r in rows:
        lines.append(
            f"{r.name:<{widths[0]}}{r.host:<{widths[1]}}{r.device:<8}{r.queue:<8}{r.pid or '-':>8}  "
            f"{_age(r.heartbeat_age_s):<11}{r.state}"
        )
        lines.extend(f"    {run_label(run)}" for run in r.runs)
    return "\n".join(lines)
