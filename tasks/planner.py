"""Pack a sweep's cells into work units: groups of equal shape trained as one ensemble on one device.

Sizing. A unit's memory is engine.memory's estimate (parameters, θ0 per distinct seed, activations
of one batch, the costly metrics' probes; calibrated against measured peaks) against the worker's
budget, `memory_budget`: the device_memory setting, or measured (CUDA: free memory × memory_fraction;
CPU: RAM × memory_fraction / workers). `pack` caps a group's units at the members that fit, on top of
MAX_MEMBERS and the parallelism split, and `Plan.memory_note` says when the budget was what limited
them. A unit that still runs out of memory is split by the worker (tasks.worker), never lost.

Time. FLOPs per step ≈ 6 × parameters × batch per member (forward 2, backward 4; the centered
θ0 forward adds a third of that again: factor 8), × members × steps; divided by a sustained throughput
constant per device class (THROUGHPUT_FLOPS). These constants are what a batched float32 matmul
sustains on a 2-core laptop CPU and a datacenter GPU; float64 counts double. It is an estimate for
the progress display and the Celery visibility timeout, never a deadline.

Measured throughput. Each worker writes what it sustained on the unit it just trained (FLOPs as above
per second of training) to `<data_dir>/throughput.json`, normalized by the share of the cores the
load average left it; `plan` uses that, scaled by the share the load leaves now, instead of the
constant (a busy machine's estimate was 9× short, a quiet one's right).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import memory
from engine.config import ConfigError, RunConfig
from storage.settings import Settings

THROUGHPUT_FILE = "throughput.json"
THROUGHPUT_MAX_AGE_S = 7 * 86400.0  # an older measurement may be of another machine or torch build

FLOPS_PER_PARAM_PER_EXAMPLE = memory.FLOPS_PER_PARAM_PER_EXAMPLE
# per member, by architecture (engine.memory: the dashboard's cost model uses it too)
parameter_count = memory.parameter_count
# Memory a unit may take by device class (bytes) where nothing can be measured: `pack` without a
# budget, a machine that does not say its RAM, a GPU sweep planned on a machine without one (12 GiB:
# headroom on a 16 GB card; bigger cards just run more units at once).
MEMORY_BUDGET = {"cpu": 2 * 2**30, "cuda": 12 * 2**30}
# Upper bound on members per unit: past this a batched matmul is already at peak, and smaller units
# let several workers share a sweep and cancel/retry at a finer grain.
MAX_MEMBERS = {"cpu": 64, "cuda": 512}
THROUGHPUT_FLOPS = {"cpu": 2.0e10, "cuda": 2.0e13}
# Fixed cost of a unit before its first step: a worker process importing torch, building the data
# stream, (on a GPU) creating the CUDA context. Dominates small units such as the dashboard's demo.
UNIT_OVERHEAD_S = {"cpu": 3.0, "cuda": 10.0}
WARM_OVERHEAD_S = 0.5  # a warm worker (torch imported, waiting) picks a unit up within its poll
DTYPE_BYTES = {"float32": 4, "float64": 8}


def device_class(device: str) -> str:
    if device == "cpu":
        return "cpu"
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        return "cuda"
    raise ConfigError("device", f"must be 'cpu', 'cuda' or 'cuda:N' (got {device!r})")


def member_bytes(cfg: RunConfig) -> int:
    """Estimated bytes one more member of `cfg`'s shape adds to a unit (engine.memory: with its own θ0)."""
    est = memory.estimate(cfg)
    return est.per_member + est.per_seed


def memory_budget(settings: Any, device: str = "cpu") -> tuple[int, str]:
    """(bytes a unit may take on `device`, where that number comes from: for messages). The
    device_memory setting when set; else measured: a CUDA device's free memory (on this machine) or
    the RAM shared by the local workers, times memory_fraction; else MEMORY_BUDGET."""
    cls = device_class(device)
    explicit = getattr(settings, "device_memory", None)
    if explicit:
        return int(explicit), "the device_memory setting (GAMMA_LAB_DEVICE_MEMORY)"
    fraction = float(getattr(settings, "memory_fraction", 0.7))
    if cls == "cuda":
        free = memory.cuda_free_memory(device)
        if free is None:
            return MEMORY_BUDGET[cls], "a 16 GB card's default (no GPU here to measure; set GAMMA_LAB_DEVICE_MEMORY)"
        return int(free * fraction), f"{fraction:g} × the free memory of {device} (GAMMA_LAB_DEVICE_MEMORY sets it)"
    ram = memory.physical_memory()
    if ram is None:
        return MEMORY_BUDGET[cls], "the default (this system does not say its RAM; set GAMMA_LAB_DEVICE_MEMORY)"
    workers = max(int(getattr(settings, "workers", 1) or 1), 1)
    return int(ram * fraction / workers), (
        f"{fraction:g} × the RAM / {workers} worker(s) (GAMMA_LAB_DEVICE_MEMORY sets it)"
    )


def unit_flops(configs: Sequence[RunConfig], steps: int | None = None) -> float:
    """FLOPs of training `configs` as one ensemble for `steps` steps (default: all), float64 counted
    double (see module docstring)."""
    if not configs:
        return 0.0
    cfg = configs[0]
    n_steps = cfg.train.steps if steps is None else steps
    flops = FLOPS_PER_PARAM_PER_EXAMPLE * parameter_count(cfg) * cfg.train.batch_size * n_steps
    return flops * len(configs) * (2.0 if cfg.resolved_dtype == "float64" else 1.0)


def estimate_seconds(
    configs: Sequence[RunConfig], device: str = "cpu", *, rate: float | None = None, overhead: float | None = None
) -> float:
    """Rough wall time of training `configs` as one ensemble on `device` (see module docstring): the
    start-up `overhead` (default UNIT_OVERHEAD_S) plus the FLOPs at `rate` (default THROUGHPUT_FLOPS)."""
    if not configs:
        return 0.0
    cls = device_class(device)
    start = UNIT_OVERHEAD_S[cls] if overhead is None else overhead
    return start + unit_flops(configs) / (rate or THROUGHPUT_FLOPS[cls])


def _core_share(load: float) -> float:
    """The share of the cores one more busy process gets at this 1-minute load average."""
    cores = os.cpu_count() or 1
    return min(1.0, cores / max(load, 1.0))


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on this platform: assume a quiet machine
        return 0.0


def record_throughput(
    data_dir: Any, device: str, flops: float, seconds: float, *, setup_s: float | None = None,
    cold_start_s: float | None = None,
) -> None:
    """A worker's measurement: `flops` trained in `seconds` (0 to record only the times), the unit's
    `setup_s` before its first step (data stream, model), a process's `cold_start_s` (start-up and
    imports). Kept per device class, normalized to a quiet machine by the core share the load left,
    half old, half new."""
    path = Path(data_dir) / THROUGHPUT_FILE
    cls = device_class(device)
    share = _core_share(_load()) if cls == "cpu" else 1.0
    entry = dict(_read_throughput(path).get(cls) or {})
    new: dict[str, float] = {}
    if flops > 0 and seconds > 0.005:
        new["flops_per_s"] = flops / seconds / share
    for key, value in (("setup_s", setup_s), ("cold_start_s", cold_start_s)):
        if value is not None and value >= 0:
            new[key] = value * share
    if not new:
        return
    for key, value in new.items():
        old = entry.get(key)
        entry[key] = value if not isinstance(old, int | float) or old <= 0 else 0.5 * (float(old) + value)
    entry["at"] = time.time()
    table = _read_throughput(path)
    table[cls] = entry
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(table, sort_keys=True))
        os.replace(tmp, path)  # atomic: a reader never sees half a file
    except OSError:  # a full or read-only folder: the estimate keeps the constants
        tmp.unlink(missing_ok=True)


def record_unit(
    data_dir: Any, device: str, configs: Sequence[RunConfig], *, began: float, first: tuple[float, int] | None,
    ended: float, steps: int,
) -> None:
    """Measure a unit that trained `steps` steps between monotonic times `began` and `ended`, its first
    flush at `first` = (time, steps by then): the rate from the first flush on (steady state), the
    setup as what came before the first step."""
    if first is not None and steps > first[1] and ended - first[0] > 0.005:
        rate = unit_flops(configs, steps - first[1]) / (ended - first[0])
        setup = max(0.0, first[0] - began - unit_flops(configs, first[1]) / rate)
        record_throughput(data_dir, device, rate * (ended - first[0]), ended - first[0], setup_s=setup)
    elif steps > 0:
        record_throughput(data_dir, device, unit_flops(configs, steps), ended - began)


def _read_throughput(path: Path) -> dict[str, dict[str, float]]:
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}


@dataclass(frozen=True)
class Measured:
    """What this machine's workers measured, scaled to the load now (None: not measured yet)."""

    rate: float | None  # FLOPs per second of training
    setup_s: float | None  # a unit's time before its first step
    cold_start_s: float | None  # a worker process's start-up, torch imported


def measured_throughput(data_dir: Any, device: str) -> Measured:
    """The workers' recent measurements (THROUGHPUT_MAX_AGE_S) scaled by the core share the load
    leaves now."""
    cls = device_class(device)
    entry = _read_throughput(Path(data_dir) / THROUGHPUT_FILE).get(cls) or {}
    try:
        fresh = time.time() - float(entry["at"]) <= THROUGHPUT_MAX_AGE_S
    except (KeyError, TypeError, ValueError):
        fresh = False
    share = _core_share(_load()) if cls == "cpu" else 1.0

    def get(key: str) -> float | None:
        value = entry.get(key)
        if fresh and isinstance(value, int | float) and math.isfinite(value) and value >= 0:
            return float(value)
        return None

    rate = get("flops_per_s")
    setup, cold = get("setup_s"), get("cold_start_s")
    return Measured(
        rate * share if rate else None,
        setup / share if setup is not None else None,
        cold / share if cold is not None else None,
    )


@dataclass(frozen=True)
class WorkUnit:
    """Configs of one shape, trained together on one device. `attempts[i]` belongs to `configs[i]`."""

    unit_id: str
    configs: list[RunConfig]
    attempts: list[int]
    device: str = "cpu"
    sweep_id: str | None = None

    @property
    def run_ids(self) -> list[str]:
        return [c.run_id for c in self.configs]

    def to_dict(self) -> dict[str, Any]:
        return {
            "unit_id": self.unit_id,
            "device": self.device,
            "sweep_id": self.sweep_id,
            "attempts": list(self.attempts),
            "configs": [c.to_dict() for c in self.configs],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> WorkUnit:
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError("unit", f"not valid JSON: {exc}") from None
        if not isinstance(d, dict) or not isinstance(d.get("configs"), list) or not d["configs"]:
            raise ConfigError("unit", "must be an object with a non-empty 'configs' list")
        configs = [RunConfig.from_dict(c) for c in d["configs"]]
        attempts = d.get("attempts") or [1] * len(configs)
        if len(attempts) != len(configs) or not all(isinstance(a, int) and a >= 0 for a in attempts):
            raise ConfigError("unit.attempts", "must be one integer >= 0 per config")
        return cls(
            unit_id=str(d.get("unit_id") or _unit_id(configs, attempts)),
            configs=configs,
            attempts=list(attempts),
            device=str(d.get("device", "cpu")),
            sweep_id=d.get("sweep_id"),
        )


@dataclass
class Plan:
    units: list[WorkUnit] = field(default_factory=list)
    estimated_seconds: float = 0.0  # all units one after another
    max_unit_seconds: float = 0.0
    workers: int = 1  # units that run at once (local workers, GPUs)
    memory_note: str = ""  # when the memory budget, not the other rules, limited some unit's size

    @property
    def wall_seconds(self) -> float:
        """Rough wall time with `workers` units running at once: no less than the longest unit."""
        return max(self.max_unit_seconds, self.estimated_seconds / max(self.workers, 1))

    @property
    def n_cells(self) -> int:
        return sum(len(u.configs) for u in self.units)

    @property
    def n_units(self) -> int:
        return len(self.units)


def _unit_id(configs: Sequence[RunConfig], attempts: Sequence[int]) -> str:
    text = ",".join(f"{c.run_id}:{a}" for c, a in zip(configs, attempts, strict=True))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def max_members(
    cfg: RunConfig, device: str = "cpu", memory_budget: int | None = None, seeds: int | None = None
) -> int:
    """Members of `cfg`'s shape that fit one unit on `device` (at least 1: a member that does not fit
    alone is the worker's to report). `seeds`: distinct seeds among them, when known (θ0 is per seed)."""
    cls = device_class(device)
    budget = memory_budget if memory_budget is not None else MEMORY_BUDGET[cls]
    return max(1, min(MAX_MEMBERS[cls], memory.estimate(cfg).max_members(budget, seeds)))


def pack(
    configs: Sequence[RunConfig],
    *,
    device: str = "cpu",
    attempts: Mapping[str, int] | None = None,
    sweep_id: str | None = None,
    parallelism: int = 1,
    memory_budget: int | None = None,
    member_limit: int | None = None,
    rate: float | None = None,
    overhead: float | None = None,
) -> Plan:
    """Group `configs` by shape_key and split each group into units that fit the device.

    `parallelism`: split a group into at least this many units when it has enough cells, so N local
    workers (or GPUs) all get work. Units are filled evenly (sizes differ by at most one), keeping
    the configs' order (γ-major) so a unit holds neighbouring cells.
    """
    attempts = attempts or {}
    groups: dict[str, list[RunConfig]] = defaultdict(list)
    for c in configs:
        groups[c.shape_key].append(c)
    plan = Plan(workers=max(parallelism, 1))
    cls = device_class(device)
    budget = memory_budget if memory_budget is not None else MEMORY_BUDGET[cls]
    notes: list[str] = []
    for group in groups.values():
        seeds = len({c.seed for c in group})
        cap = max_members(group[0], device, budget, seeds)
        limit = MAX_MEMBERS[cls] if member_limit is None else max(1, min(MAX_MEMBERS[cls], member_limit))
        cap = min(cap, limit)
        spread = min(max(parallelism, 1), len(group))  # at least one unit per worker
        n_units = max(math.ceil(len(group) / cap), spread)
        if n_units > max(math.ceil(len(group) / limit), spread):  # the budget, not the other rules, split it
            est = memory.estimate(group[0])
            notes.append(
                f"{len(group)} cells of width {group[0].model.width} in units of at most {cap} member(s) "
                f"(about {memory.describe(est.total(cap, min(cap, seeds)))} a unit, against a memory budget of "
                f"{memory.describe(budget)})"
            )
        size, extra = divmod(len(group), n_units)
        start = 0
        for i in range(n_units):
            chunk = group[start : start + size + (1 if i < extra else 0)]
            start += len(chunk)
            att = [int(attempts.get(c.run_id, 1)) for c in chunk]
            unit = WorkUnit(_unit_id(chunk, att), list(chunk), att, device, sweep_id)
            seconds = estimate_seconds(chunk, device, rate=rate, overhead=overhead)
            plan.units.append(unit)
            plan.estimated_seconds += seconds
            plan.max_unit_seconds = max(plan.max_unit_seconds, seconds)
    if notes:
        plan.memory_note = "memory limited the unit size: " + "; ".join(notes)
    return plan


def plan(spec: Any, settings: Settings, device: str = "cpu", *, warm: bool = False, **kwargs: Any) -> Plan:
    """Plan the spec's full grid (see `pack` for the keyword arguments). Registry reuse is tasks.api's job.

    The time estimate uses what the data folder's workers measured when there is something (rate, a
    unit's setup, a worker's cold start); `warm`: the workers wait already, no start-up to pay."""
    kwargs.setdefault("parallelism", getattr(settings, "workers", 1))
    if kwargs.get("memory_budget") is None:
        kwargs["memory_budget"] = memory_budget(settings, device)[0]
    if getattr(settings, "data_dir", None) is not None:
        m = measured_throughput(settings.data_dir, device)
        if kwargs.get("rate") is None:
            kwargs["rate"] = m.rate
        if kwargs.get("overhead") is None:
            start = WARM_OVERHEAD_S if warm else (m.cold_start_s or UNIT_OVERHEAD_S[device_class(device)])
            kwargs["overhead"] = start + (m.setup_s or 0.0)
    return pack(spec.cells(), device=device, **kwargs)
