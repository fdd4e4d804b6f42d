"""What a preset will cost before it runs: `gamma-lab reproduce NAME --scale paper --plan`.

Each sweep of the preset at one scale, as it would be submitted (name, network, dataset, steps, batch,
the γ, η and seed counts, cells, member-steps = cells × steps) and the total, with the time the
planner estimates from this data folder's measured throughput (tasks.planner.measured_throughput).
A CUDA throughput measured by a GPU worker of the same folder adds the time on GPU workers. Where no
worker of the folder has measured one, the time is said to be unmeasured rather than guessed
from the planner's constants: a lab deciding whether to send `paper` to GPU workers should not read a
laptop constant as a forecast. Nothing here touches the registry or the queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tasks.planner import measured_throughput, plan, unit_flops
from tasks.reproduce import Preset
from tasks.spec import SweepSpec


@dataclass(frozen=True)
class SweepCost:
    """One sweep of a preset: its size and, when this machine has measured a throughput, its time."""

    name: str
    network: str
    dataset: str
    steps: int
    batch: int
    n_gammas: int
    n_etas: int
    n_seeds: int
    cells: int
    flops: float
    seconds: float | None  # None: no measured throughput to estimate it with

    @property
    def member_steps(self) -> int:
        return self.cells * self.steps


@dataclass(frozen=True)
class PresetPlan:
    preset: str
    scale: str
    device: str
    sweeps: list[SweepCost]
    rate: float | None  # the measured FLOPs/s the times use (None: unmeasured)

    @property
    def member_steps(self) -> int:
        return sum(s.member_steps for s in self.sweeps)

    @property
    def seconds(self) -> float | None:
        times = [s.seconds for s in self.sweeps]
        return None if any(t is None for t in times) else float(sum(t for t in times if t is not None))


def preset_plan(preset: Preset, scale: str, settings: Any, device: str = "cpu") -> PresetPlan:
    """The cost of running `preset` at `scale` on `device` with these settings' workers (nothing queued)."""
    rate = measured_throughput(settings.data_dir, device).rate
    sweeps = []
    for raw in preset.specs(scale):
        spec = SweepSpec.from_dict(raw)
        m, g = spec.model, spec.grid
        cells = spec.cells()
        seconds = plan(spec, settings, device).wall_seconds if rate else None
        sweeps.append(SweepCost(
            name=spec.name, network=f"{m.arch} L={m.depth} N={m.width} {m.activation}", dataset=spec.data.dataset,
            steps=spec.train.steps, batch=spec.train.batch_size, n_gammas=len(g.gammas), n_etas=len(g.etas),
            n_seeds=len(g.seeds), cells=g.n_cells, flops=unit_flops(cells) if cells else 0.0, seconds=seconds,
        ))  # fmt: skip
    return PresetPlan(preset.name, scale, device, sweeps, rate)


def gpu_line(preset: Preset, scale: str, settings: Any) -> str | None:
    """The time on GPU workers when one of this data folder's workers has measured a CUDA throughput
    (the paper scale is sized for them); None otherwise, the CPU line then stands alone."""
    if not preset.specs(scale) or measured_throughput(settings.data_dir, "cuda").rate is None:
        return None
    p = preset_plan(preset, scale, settings, "cuda")
    if p.seconds is None or p.rate is None:
        return None
    return (f"estimated time on GPU workers (cuda): about {_duration(p.seconds)}, at the {p.rate:.3g} FLOP/s a "
            "worker of this data folder measured on a GPU, the sweeps one after another")  # fmt: skip


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def plan_text(p: PresetPlan) -> str:
    """The plan as the CLI prints it: one line per sweep, then the totals and the time (or why none)."""
    lines = [f"{p.preset} ({p.scale}): plan only, nothing queued"]
    if not p.sweeps:
        lines.append("no sweeps: the preset runs a closed-form simulator when it measures (seconds on a CPU)")
    for s in p.sweeps:
        time = f", about {_duration(s.seconds)}" if s.seconds is not None else ""
        lines.append(
            f"{s.name}: {s.network}, {s.dataset}, {s.steps} steps of batch {s.batch}; {s.n_gammas} γ × {s.n_etas} η "
            f"× {s.n_seeds} seed{'' if s.n_seeds == 1 else 's'} = {s.cells} cells; {s.member_steps:,} member-steps, "
            f"{s.flops:.3g} FLOPs{time}"
        )
    total_flops = sum(s.flops for s in p.sweeps)
    if p.sweeps:
            lines.append(f"total: {sum(s.cells for s in p.sweeps)} cells, {p.member_steps:,} member-steps, "
                     f"{total_flops:.3g} FLOPs")  # fmt: skip
    if p.sweeps and p.seconds is not None and p.rate is not None:
        lines.append(f"estimated time on this machine ({p.device}): about {_duration(p.seconds)}, at the measured "
                     f"{p.rate:.3g} FLOP/s scaled to the load now, the sweeps one after another")  # fmt: skip
    elif p.sweeps:
        lines.append(f"estimated time on this machine ({p.device}): unmeasured (no worker of this data folder has "
                     "recorded a throughput in the last 7 days; any sweep run here records one)")  # fmt: skip
    return "\n".join(lines)
