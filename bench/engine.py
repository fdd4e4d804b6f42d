"""Benchmark: one γ×η×seed grid trained two ways in one process, side by side (prints, never asserts).

  reference  what the authors' code does: per cell one nn.Module, a frozen deep copy for centering,
             one torch.optim.SGD, its own data stream, loss.item() every step; cells one after another.
  ensemble   engine.trainer.train_ensemble: the whole grid as one batched computation.

Prints both wall times, their ratio, the ensemble's achieved FLOP/s and that as a fraction of this
machine's dense-matmul peak (a large square GEMM in the same dtype, measured in the same run), and
checks that both ways reach the same losses. The peak is measured before the reference, before the
ensemble and after it (the machine may be shared: the load average is printed too), and the
fraction uses the best peak measured next to the ensemble.

    python bench/engine.py            # 36 cells, L=3 MLP, width 256, batch 128, 200 steps, MNIST-1D
    python bench/engine.py --steps 50 --cells 18 --width 128
    python bench/engine.py --quick    # 4 cells, width 64, 20 steps: a smoke run
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time

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
from engine.trainer import train_ensemble  # noqa: E402


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


def reference_run(cfg: RunConfig, dims: list[int]) -> tuple[list[float], float]:
    """One cell the reference way. Returns the losses and the seconds spent making its data."""
    model = ReferenceMLP(dims, cfg.gamma)
    init = build_model(cfg.model, (dims[0],), dims[-1]).init([cfg.seed])  # the same weights as the ensemble
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            layer.weight.copy_(init[f"w{i + 1}"][0])
            layer.bias.copy_(init[f"b{i + 1}"][0])
    frozen = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate)
    t0 = time.perf_counter()
    stream = make_stream(cfg.data, batch_size=cfg.train.batch_size)
    data_s = time.perf_counter() - t0
    losses: list[float] = []
    for _ in range(cfg.train.steps):
        t0 = time.perf_counter()
        batch = stream.next_batch()
        data_s += time.perf_counter() - t0
        out = model(batch.x) - frozen(batch.x)
        loss = (out - batch.target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = loss.item()
        losses.append(value)
        if not math.isfinite(value) or value > cfg.train.divergence_factor * losses[0]:
            break
    return losses, data_s


def matmul_peak(dtype: torch.dtype, size: int = 2048, reps: int = 5) -> float:
    """Best-of FLOP/s of a large square GEMM: this machine's practical dense-matmul peak right now."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    out = torch.empty(size, size, dtype=dtype)
    torch.mm(a, b, out=out)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
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


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 4 cells, width 64, 20 steps")
    ap.add_argument("--cells", type=_positive_int, default=36, help="grid cells (6 γ × 3 η × seeds)")
    ap.add_argument("--width", type=_positive_int, default=256)
    ap.add_argument("--steps", type=_positive_int, default=200)
    ap.add_argument("--batch", type=_positive_int, default=128)
    ap.add_argument("--dataset", default="mnist1d", choices=["mnist1d", "teacher"])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.quick:
        args.cells, args.width, args.steps = 4, 64, 20
    configs = make_grid(args)
    in_dim = make_stream(configs[0].data, batch_size=1).input_shape[0]
    dims = [in_dim, args.width, args.width, 10]
    cpu = args.device == "cpu"
    load_start = os.getloadavg()
    print(f"grid: {len(configs)} cells, L=3 MLP {dims}, batch {args.batch}, {args.steps} steps, {args.dataset}, "
          f"float32, device {args.device}")  # fmt: skip
    print(f"torch {torch.__version__}: {torch.get_num_threads()} threads on {os.cpu_count()} cores, "
          f"MKL {torch.backends.mkl.is_available()}, oneDNN {torch.backends.mkldnn.is_available()}")  # fmt: skip
    print(f"load average at start (1, 5, 15 min): {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}")

    # Peak, reference, peak, ensemble, peak: the machine is shared, so the peak is measured right
    # next to each timed part and the ensemble is compared with the peaks on either side of it.
    peaks = [matmul_peak(torch.float32)] if cpu else []
    t0 = time.perf_counter()
    ref_runs = [reference_run(c, dims) for c in configs] if cpu else []
    t_ref = time.perf_counter() - t0
    ref_losses = [losses for losses, _ in ref_runs]
    t_ref_data = sum(data_s for _, data_s in ref_runs)
    if cpu:
        peaks.append(matmul_peak(torch.float32))

    t0 = time.perf_counter()
    results = train_ensemble(configs, device=args.device, flush_every=args.steps)
    if not cpu:
        torch.cuda.synchronize()
    t_ens = time.perf_counter() - t0
    if cpu:
        peaks.append(matmul_peak(torch.float32))
    load_end = os.getloadavg()

    # What the ensemble computes per step: forward + backward of each of the K members, and the
    # centering forward of θ0 once per distinct seed (θ0 depends only on the seed).
    forward, backward = mlp_gemm_flops(dims, args.batch)
    n_seeds = len({c.seed for c in configs})
    flops_step = len(configs) * (forward + backward) + n_seeds * forward
    flops = flops_step * args.steps
    achieved = flops / t_ens
    peak = max(peaks[1:]) if cpu else math.nan  # the best sgemm around the ensemble's timing
    ratio = t_ref / t_ens if cpu else math.nan
    div_ens = sum(r.status == "diverged" for r in results)
    gap = math.nan
    if ref_losses:
        div_ref = sum(len(r) < args.steps for r in ref_losses)
        diffs = [
            abs(r.summary.get("final_train_loss", math.nan) - ref[-1]) / abs(ref[-1])
            for r, ref in zip(results, ref_losses, strict=True)
            if r.status == "done" and len(ref) == args.steps
        ]
        gap = max(diffs, default=math.nan)
        print(f"diverged cells: reference {div_ref}, ensemble {div_ens}; "
              f"max relative gap of final losses {gap:.1e}")  # fmt: skip
    print(f"FLOPs counted per step (GEMMs only): {len(configs)} members × (forward {forward / 1e6:.1f} + backward "
          f"{backward / 1e6:.1f} MFLOP) + {n_seeds} centering forwards of θ0 (one per distinct seed) "
          f"= {flops_step / 1e9:.2f} GFLOP; the reference does a θ0 forward per cell")  # fmt: skip
    print(f"matmul peaks (2048² sgemm, best of 5) before reference / before ensemble / after: "
          f"{' / '.join(f'{p / 1e9:.1f}' for p in peaks)} GFLOP/s")  # fmt: skip
    print(f"load average at end (1, 5, 15 min): {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")
    print("----------------------------------------------------------------")
    print(f"reference, cell by cell:    {t_ref:8.2f} s   (of which making its data: {t_ref_data:.2f} s)")
    print(f"ensemble (train_ensemble):  {t_ens:8.2f} s   (data included)")
    print(f"speed-up:                   {ratio:8.1f}x")
    print(f"speed-up without the reference's data time: {(t_ref - t_ref_data) / t_ens:.1f}x")
    print(f"ensemble throughput:        {achieved / 1e9:8.1f} GFLOP/s")
    print(f"matmul peak:                {peak / 1e9:8.1f} GFLOP/s")
    print(f"ensemble / matmul peak:     {achieved / peak:8.1%}")
    return {
        "t_ref": t_ref, "t_ens": t_ens, "ratio": ratio, "ratio_without_ref_data": (t_ref - t_ref_data) / t_ens,
        "peak_fraction": achieved / peak, "gap": gap,
    }  # fmt: skip


if __name__ == "__main__":
    main()
