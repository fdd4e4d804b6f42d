"""Benchmark: one γ×η×seed grid trained two ways in one process, side by side (prints, never asserts).

  reference  what the authors' code does (Pehlevan-Group/Richness_Sweep, vision_tasks.py): the data
             made once for the grid, then per cell one nn.Module, a frozen deep copy for centering,
             one torch.optim.SGD, each step's batch sliced from the preloaded data, loss.item() and a
             NaN check every step; cells one after another.
  ensemble   engine.trainer.train_ensemble: the whole grid as one batched computation.

Prints both wall times, their ratio, the ensemble's achieved FLOP/s and that as a fraction of this
machine's dense-matmul peak (a large square GEMM in the same dtype, measured in the same run), and
checks that both ways reach the same losses. Both ways run on --device (a GPU too, where the
reference's per-cell kernels are launch-bound). The machine may be shared, so the pair is timed
--repeat times, the peak is measured right before and after each timed part, and the medians are
reported with every pair's ratio; the load average is printed too.

    python bench/engine.py            # 36 cells, L=3 MLP, width 256, batch 128, 200 steps, MNIST-1D
    python bench/engine.py --steps 50 --cells 18 --width 128
    python bench/engine.py --quick    # 4 cells, width 64, 20 steps: a smoke run
    python bench/engine.py --device cuda --repeat 5
    python bench/engine.py --dead-half   # half the unit diverges early: compacted vs not vs survivors alone
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import sys
import time
from typing import Any

# Run as a script, this file's folder comes first on sys.path and its name would shadow the engine
# package: drop that entry before importing it.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from engine.config import DataConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from engine.data import make_stream  # noqa: E402
from engine.models import build_model  # noqa: E402
from engine.trainer import train_ensemble, train_on_stream  # noqa: E402


class ReferenceMLP(nn.Module):
    """The μP-γ MLP as a plain module (hidden /sqrt(fan_in), readout /(fan_in·γ))."""

    def __init__(self, dims: list[int], gamma: float):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.dims, self.gamma = dims, gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)
        for i, layer in enumerate(self.layers[:-1]):
            h = torch.relu(layer(h) / math.sqrt(self.dims[i]))
        return self.layers[-1](h) / (self.dims[-2] * self.gamma)


def reference_data(cfg: RunConfig, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid's training data made once, as the authors' script loads a data chunk once onto the
    device for all its cells: (steps·B, D) inputs and one-hot targets, sliced per step."""
    stream = make_stream(cfg.data, batch_size=cfg.train.batch_size, device=device)
    batches = [stream.next_batch() for _ in range(cfg.train.steps)]
    return torch.cat([b.x for b in batches]), torch.cat([b.target for b in batches])


def reference_run(cfg: RunConfig, dims: list[int], data: tuple[torch.Tensor, torch.Tensor], device: str) -> list[float]:
    """One cell the way the authors' vision_tasks.py trains it: a centered model (a live copy and a
    frozen deep copy), torch.optim.SGD at lr N·η, the step's batch sliced from the preloaded data,
    loss.item() and a NaN check every step. Returns the losses."""
    model = ReferenceMLP(dims, cfg.gamma)
    init = build_model(cfg.model, (dims[0],), dims[-1]).init([cfg.seed])  # the same weights as the ensemble
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            layer.weight.copy_(init[f"w{i + 1}"][0])
            layer.bias.copy_(init[f"b{i + 1}"][0])
    model.to(device)
    frozen = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate)
    x_all, y_all = data
    b = cfg.train.batch_size
    losses: list[float] = []
    for t in range(cfg.train.steps):
        x, y = x_all[b * t : b * (t + 1)], y_all[b * t : b * (t + 1)]
        opt.zero_grad()
        out = model(x) - frozen(x)
        loss = (out - y).pow(2).mean()
        loss.backward()
        opt.step()
        value = loss.item()
        losses.append(value)
        if torch.isnan(loss).item() or value > cfg.train.divergence_factor * losses[0]:
            break
    return losses


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def matmul_peak(dtype: torch.dtype, device: str = "cpu", reps: int = 5) -> float:
    """Best-of FLOP/s of a large square GEMM: this machine's practical dense-matmul peak right now
    (2048² on a CPU, 8192² on a GPU; TF32 stays off as in the trainer, so it is the true fp32 peak)."""
    size = 2048 if device == "cpu" else 8192
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    out = torch.empty(size, size, dtype=dtype, device=device)
    torch.mm(a, b, out=out)
    _sync(device)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def mlp_gemm_flops(dims: list[int], batch: int) -> tuple[float, float]:
    """Dense GEMM FLOPs (2·m·n·k each) of one step of one network: (forward, backward). The
    backward is the weight gradients of every layer plus the input gradients of every layer but
    the first (the data needs none), a little under 2× the forward. Biases, activations and the
    loss are not counted, so the totals are a lower bound on the work done."""
    layer = [2 * batch * a * b for a, b in zip(dims[:-1], dims[1:], strict=True)]
    return float(sum(layer)), float(sum(layer) + sum(layer[1:]))


def make_grid(args: argparse.Namespace) -> list[RunConfig]:
    """args.cells cells: 6 γ (0.1 … 10) × 3 η, then as many seeds as needed, in that order."""
    gammas = list(np.geomspace(0.1, 10.0, 6))
    etas = [1e-3, 3e-3, 1e-2]
    seeds = range(math.ceil(args.cells / (len(gammas) * len(etas))))
    data = DataConfig(dataset=args.dataset, input_dim=40, n_classes=10)
    train = TrainConfig(batch_size=args.batch, steps=args.steps, dtype="float32", metrics=(), eval_points=0)
    model = ModelConfig(arch="mlp", width=args.width, depth=3)
    cells = [
        RunConfig(model=model, data=data, train=train, gamma=float(g), eta=e, seed=s)
        for s in seeds
        for g in gammas
        for e in etas
    ]
    return cells[: args.cells]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1 (got {text})")
    return value


def warm_up(configs: list[RunConfig], dims: list[int], device: str) -> None:
    """A few untimed steps of both ways first, so that neither pays one-time costs (allocator,
    kernel selection, lazy imports) inside its timing."""
    short = [dataclasses.replace(c, train=dataclasses.replace(c.train, steps=5)) for c in configs[:4]]
    data = reference_data(short[0], device)
    for c in short:
        reference_run(c, dims, data, device)
    train_ensemble(short, device=device, flush_every=5)
    _sync(device)


def time_pair(configs: list[RunConfig], dims: list[int], device: str) -> dict[str, Any]:
    """One side-by-side measurement: peak, reference, peak, ensemble, peak (the machine is shared,
    so the peak is measured right next to each timed part)."""
    peaks = [matmul_peak(torch.float32, device)]
    t0 = time.perf_counter()
    data = reference_data(configs[0], device)  # once for the grid, inside the reference's time
    _sync(device)
    t_ref_data = time.perf_counter() - t0
    ref_losses = [reference_run(c, dims, data, device) for c in configs]
    t_ref = time.perf_counter() - t0
    peaks.append(matmul_peak(torch.float32, device))
    t0 = time.perf_counter()
    results = train_ensemble(configs, device=device, flush_every=configs[0].train.steps)
    _sync(device)
    t_ens = time.perf_counter() - t0
    peaks.append(matmul_peak(torch.float32, device))
    return {
        "t_ref": t_ref, "t_ref_data": t_ref_data, "t_ens": t_ens,
        "peak": max(peaks[1:]),  # the best GEMM around the ensemble's timing
        "peaks": peaks, "ref_losses": ref_losses, "results": results,
    }  # fmt: skip


FLUSH_EVERY = 50  # tasks.worker's flush interval: compaction happens at flushes


def _timed_unit(configs: list[RunConfig], device: str, compact: bool) -> tuple[float, float, list[Any]]:
    """(wall seconds, this process's CPU seconds, results) of one unit, its data stream included. On
    a shared machine the CPU time is the steadier clock: other jobs' load stretches the wall time
    (with one torch thread the CPU time is the work done; with more it also counts their spinning)."""
    first = configs[0]
    t0, c0 = time.perf_counter(), time.process_time()
    stream = make_stream(first.data, batch_size=first.train.batch_size, device=device, dtype=torch.float32)
    results = train_on_stream(configs, stream, device=device, flush_every=FLUSH_EVERY, compact=compact)
    _sync(device)
    return time.perf_counter() - t0, time.process_time() - c0, results


def dead_half(args: argparse.Namespace, repeat: int) -> dict[str, float]:
    """Half the unit's cells diverge within the first steps (each survivor's twin at γ = 0.1 and an η of
    10 … 1000, far past the lazy edge; interleaved with the survivors):
    the unit with compaction, the same unit without it (dead members frozen but still in every GEMM)
    and the surviving half alone, timed side by side `repeat` times; the ratio to the survivors alone
    is taken within each triple (its arms ran back to back, order rotated), then the median."""
    survivors = make_grid(argparse.Namespace(**{**vars(args), "cells": max(1, args.cells // 2)}))
    etas = np.geomspace(10, 1e3, len(survivors))
    doomed = [c.replace(gamma=0.1, eta=float(e)) for c, e in zip(survivors, etas, strict=True)]
    unit = [c for pair in zip(survivors, doomed, strict=True) for c in pair]
    print(f"dead half: {len(unit)} cells (half at γ = 0.1, η ≥ 10), L=3 MLP width {args.width}, batch {args.batch}, "
          f"{args.steps} steps, flush every {FLUSH_EVERY}, float32, {args.device}, {torch.get_num_threads()} "
          f"thread(s); {repeat} side-by-side triple(s)")  # fmt: skip
    _timed_unit(unit[:4], args.device, True)  # warm-up: allocator, kernel selection
    arms = {"compacted": (unit, True), "uncompacted": (unit, False), "alone": (survivors, True)}
    wall: dict[str, list[float]] = {key: [] for key in arms}
    cpu: dict[str, list[float]] = {key: [] for key in arms}
    results: dict[str, list[Any]] = {}
    for i in range(repeat):
        for key in list(arms)[i % 3 :] + list(arms)[: i % 3]:  # rotated: no arm always runs first
            w, c, results[key] = _timed_unit(arms[key][0], args.device, arms[key][1])
            wall[key].append(w)
            cpu[key].append(c)
        print("triple: " + ", ".join(f"{key} {wall[key][-1]:.2f} s wall / {cpu[key][-1]:.2f} s CPU" for key in arms))
    died = [r.diverged_step for r in results["compacted"] if r.status == "diverged"]
    lived = [r for r in results["compacted"] if r.status != "diverged"]
    same = [r.summary for r in lived] == [r.summary for r in results["uncompacted"] if r.status != "diverged"]
    print(f"diverged: {len(died)} of {len(unit)}, at steps {min(died, default=-1)}..{max(died, default=-1)} "
          f"(the last by {(max(died, default=0) + 1) / args.steps:.1%} of the steps); survivors' summaries "
          f"identical with and without compaction: {'yes' if same else 'NO'}")  # fmt: skip
    print(f"---------------------------------------------------------------- medians of {repeat} triple(s)")
    out = {"same": float(same), "last_divergence": float(max(died, default=-1))}
    for clock, times in (("wall", wall), ("cpu", cpu)):
        for key, label in (("compacted", "dead half compacted"), ("uncompacted", "dead half kept (old)")):
            ratios = sorted(a / b for a, b in zip(times[key], times["alone"], strict=True))
            out[f"{key}_{clock}"] = float(np.median(ratios))
            each = ", ".join(f"{r:.2f}" for r in ratios)
            print(f"{clock:>4} time, {label:<21} {np.median(times[key]):8.2f} s: {np.median(ratios):5.2f}x the "
                  f"survivors alone ({np.median(times['alone']):.2f} s; triples {each})")  # fmt: skip
    out["ratio"] = out["compacted_cpu"]
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 4 cells, width 64, 20 steps, 1 repeat")
    ap.add_argument("--cells", type=_positive_int, default=36, help="grid cells (6 γ × 3 η × seeds)")
    ap.add_argument("--width", type=_positive_int, default=256)
    ap.add_argument("--steps", type=_positive_int, default=None, help="default 200; 1000 with --dead-half")
    ap.add_argument("--batch", type=_positive_int, default=128)
    ap.add_argument("--dataset", default="mnist1d", choices=["mnist1d", "teacher"])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (both ways run there)")
    ap.add_argument("--repeat", type=_positive_int, default=None,
                    help="side-by-side pairs to time, medians reported (default 3; 1 with --quick)")  # fmt: skip
    ap.add_argument("--threads", type=_positive_int, default=None,
                    help="torch CPU threads (default torch's); 1 on a loaded shared machine, where two threads "
                         "contend with other jobs")  # fmt: skip
    ap.add_argument("--dead-half", action="store_true",
                    help="half the cells diverge early: the unit compacted, not, and the survivors alone")  # fmt: skip
    args = ap.parse_args(argv)
    if args.quick:
        args.cells, args.width, args.steps = 4, 64, 4 * FLUSH_EVERY if args.dead_half else 20
    elif args.steps is None:
        args.steps = 20 * FLUSH_EVERY if args.dead_half else 200  # dead half: the first flush at 5 %
    repeat = args.repeat or (1 if args.quick else 3)
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {device}: torch {torch.__version__} sees no CUDA device here")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.dead_half:
        return dead_half(args, repeat)
    configs = make_grid(args)
    in_dim = make_stream(configs[0].data, batch_size=1).input_shape[0]
    dims = [in_dim, args.width, args.width, 10]
    where = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"{os.cpu_count()} CPU cores"
    print(f"grid: {len(configs)} cells, L=3 MLP {dims}, batch {args.batch}, {args.steps} steps, {args.dataset}, "
          f"float32, device {device} ({where}), {repeat} side-by-side pair(s)")  # fmt: skip
    print(f"torch {torch.__version__}: {torch.get_num_threads()} threads, "
          f"MKL {torch.backends.mkl.is_available()}, oneDNN {torch.backends.mkldnn.is_available()}")  # fmt: skip
    load = os.getloadavg()
    print(f"load average at start (1, 5, 15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")

    # What the ensemble computes per step: forward + backward of each of the K members, and the
    # centering forward of θ0 once per distinct seed (θ0 depends only on the seed).
    forward, backward = mlp_gemm_flops(dims, args.batch)
    n_seeds = len({c.seed for c in configs})
    flops = (len(configs) * (forward + backward) + n_seeds * forward) * args.steps
    warm_up(configs, dims, device)
    pairs = []
    for i in range(repeat):
        pair = time_pair(configs, dims, device)
        pair["ratio"] = pair["t_ref"] / pair["t_ens"]
        pair["fraction"] = flops / pair["t_ens"] / pair["peak"]
        pairs.append(pair)
        print(f"pair {i + 1}: reference {pair['t_ref']:.2f} s (data {pair['t_ref_data']:.2f} s), ensemble "
              f"{pair['t_ens']:.2f} s, ratio {pair['ratio']:.1f}x; GEMM peaks "
              f"{' / '.join(f'{p / 1e9:.0f}' for p in pair['peaks'])} GFLOP/s; "
              f"ensemble at {pair['fraction']:.0%} of peak")  # fmt: skip

    last = pairs[-1]
    div_ref = sum(len(r) < args.steps for r in last["ref_losses"])
    div_ens = sum(r.status == "diverged" for r in last["results"])
    diffs = [
        abs(r.summary.get("final_train_loss", math.nan) - ref[-1]) / abs(ref[-1])
        for r, ref in zip(last["results"], last["ref_losses"], strict=True)
        if r.status == "done" and len(ref) == args.steps
    ]
    gap = max(diffs, default=math.nan)
    med = {
        key: float(np.median([p[key] for p in pairs]))
        for key in ("t_ref", "t_ref_data", "t_ens", "ratio", "fraction", "peak")
    }
    ratios = sorted(p["ratio"] for p in pairs)
    load = os.getloadavg()
    print(f"diverged cells: reference {div_ref}, ensemble {div_ens}; max relative gap of final losses {gap:.1e}")
    print(f"FLOPs counted per step (GEMMs only): {len(configs)} members × (forward {forward / 1e6:.1f} + backward "
          f"{backward / 1e6:.1f} MFLOP) + {n_seeds} centering forwards of θ0 (one per distinct seed) "
          f"= {flops / args.steps / 1e9:.2f} GFLOP; the reference does a θ0 forward per cell")  # fmt: skip
    print(f"load average at end (1, 5, 15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"---------------------------------------------------------------- medians of {repeat} pair(s)")
    data_s = med["t_ref_data"]
    print(f"reference, cell by cell:    {med['t_ref']:8.2f} s   (of which making the grid's data once: {data_s:.2f} s)")
    print(f"ensemble (train_ensemble):  {med['t_ens']:8.2f} s   (data included)")
    print(f"speed-up:                   {med['ratio']:8.1f}x   (pairs: {', '.join(f'{r:.1f}' for r in ratios)})")
    print(f"ensemble throughput:        {flops / med['t_ens'] / 1e9:8.1f} GFLOP/s")
    print(f"matmul peak:                {med['peak'] / 1e9:8.1f} GFLOP/s")
    print(f"ensemble / matmul peak:     {med['fraction']:8.1%}")
    return {
        "t_ref": med["t_ref"], "t_ens": med["t_ens"], "ratio": med["ratio"], "ratio_min": ratios[0],
        "ratio_max": ratios[-1], "peak_fraction": med["fraction"], "gap": gap,
    }  # fmt: skip


if __name__ == "__main__":
    main()
