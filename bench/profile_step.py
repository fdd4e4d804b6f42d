"""Profile: where the MLP ensemble's training step spends its time on the CPU (issue #13 item 2).
Prints shares and ratios, asserts nothing.

On bench/engine.py's grid (36 members, L = 3 MLP of width 256, batch 128, MNIST-1D's 40 inputs, 10
classes, float32; 2 distinct seeds, so the packed step forwards 38 networks: 36 θ and 2 θ0), one
EnsembleModel.train_step is run under torch.profiler, and its self CPU time is grouped:

  GEMM         addmm, baddbmm, bmm, mm (the forward, δa = Wᵀδ, the in-place weight updates)
  elementwise  the activation and its gradient (clamp_min, threshold_backward), the loss and residual
  copies       copy_, index_select, cat, … (the input into the augmented buffer, θ0's readout per member)
  other        everything else (op dispatch without a kernel of its own)

It also prints the step's GEMM FLOPs against this machine's sgemm peak (a 2048² torch.mm, measured
right before and after, the best), the same fraction as bench/engine.py reports but for the step
alone (no data stream, no flushes), and the GEMMs' own rate: the ceiling the step would reach if
everything that is not a GEMM took no time.

    python bench/profile_step.py             # 36 members, width 256
    python bench/profile_step.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.engine import matmul_peak, mlp_gemm_flops  # noqa: E402
from engine.config import ModelConfig  # noqa: E402
from engine.models import build_model  # noqa: E402

GEMM = {"aten::addmm", "aten::baddbmm", "aten::bmm", "aten::mm", "aten::addmm_", "aten::baddbmm_"}
ELEMENTWISE = {"aten::clamp_min", "aten::threshold_backward", "aten::sub", "aten::addcmul", "aten::div_",
               "aten::mul_", "aten::where", "aten::neg", "aten::div", "aten::mul", "aten::clamp"}  # fmt: skip
COPIES = {"aten::copy_", "aten::index_select", "aten::cat", "aten::contiguous", "aten::clone", "aten::empty_like"}


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=36)
    ap.add_argument("--seeds", type=int, default=2, help="distinct seeds (θ0 slots)")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=50, help="profiled steps")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    k, n, b = args.members, args.width, args.batch
    model = build_model(ModelConfig(arch="mlp", width=n, depth=3), (40,), 10)
    params, params0 = model.init_pair([i % args.seeds for i in range(k)], dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, 40, generator=gen)
    label = torch.randint(0, 10, (b,), generator=gen)
    target = torch.nn.functional.one_hot(label, 10).float()
    gamma, step_size = torch.ones(k), torch.full((k,), 1e-6)

    def step() -> None:
        model.train_step(params, params0, x, target, label, gamma, step_size)

    for _ in range(5):
        step()
    peaks = [matmul_peak(torch.float32)]
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        best = min(best, (time.perf_counter() - t0) / args.steps)
    peaks.append(matmul_peak(torch.float32))
    peak = max(peaks)
    forward, backward = mlp_gemm_flops([40, n, n, 10], b)
    flops = k * (forward + backward) + args.seeds * forward
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    by_group: dict[str, float] = defaultdict(float)
    by_op: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for e in prof.key_averages():
        group = "GEMM" if e.key in GEMM else "elementwise" if e.key in ELEMENTWISE else \
            "copies" if e.key in COPIES else "other"  # fmt: skip
        by_group[group] += e.self_cpu_time_total
        by_op[e.key] += e.self_cpu_time_total
        calls[e.key] += e.count
    total = sum(by_group.values())
    load = os.getloadavg()
    print(f"MLP ensemble step: {k} members ({args.seeds} θ0 slots), width {n}, L = 3, batch {b}, float32, CPU "
          f"({os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)); load {load[0]:.2f}")  # fmt: skip
    print(f"step {best * 1e3:.2f} ms (best of 3 blocks of {args.steps}); GEMM FLOPs {flops / 1e9:.3f} G per step; "
          f"sgemm peak {' / '.join(f'{p / 1e9:.0f}' for p in peaks)} GFLOP/s")  # fmt: skip
    out = {"step_ms": best * 1e3, "fraction": flops / best / peak}
    print(f"step at {out['fraction']:.1%} of the sgemm peak")
    print("-- self CPU time under the profiler, by group")
    for group in ("GEMM", "elementwise", "copies", "other"):
        out[f"share_{group}"] = by_group[group] / total
        print(f"   {group:<12} {by_group[group] / args.steps / 1e3:7.2f} ms/step  {by_group[group] / total:6.1%}")
    gemm_s = by_group["GEMM"] / args.steps / 1e6
    out["gemm_fraction"] = flops / gemm_s / peak
    print(f"the GEMMs alone run at {out['gemm_fraction']:.1%} of the sgemm peak (their FLOPs over their own time): "
          "the step's ceiling if nothing else took time")  # fmt: skip
    print("-- ops, by self CPU time")
    for key, us in sorted(by_op.items(), key=lambda kv: -kv[1])[:14]:
        print(f"   {key:<32} {calls[key] / args.steps:5.1f} calls/step {us / args.steps / 1e3:7.3f} ms/step "
              f"{us / total:6.1%}")  # fmt: skip
    return out


if __name__ == "__main__":
    main()
