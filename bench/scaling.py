"""Benchmark: how the MLP ensemble's cost grows (issue #13 item 4). Prints numbers and ratios, asserts
nothing about time, draws docs/scaling.png.

  K       time per member-step against the ensemble size K (1 … 512) at widths 64 and 256, L = 3
  width   the same against the width N (64 … 2048) at K = 16, L = 3
  depth   the same against the depth L (2 … 8) at K = 16, width 256
  e2e     `gamma-lab sweep --wait` on a small sweep (a fresh data folder, its own worker process)
          against the engine's own time for the same work units, trained here in-process

One step is the engine's hot loop (EnsembleModel.train_step on the packed MLP, float32, on the CPU:
forward of θ and θ0, hand-written backward, in-place update), on a batch made once, so the data
stream is not in it. Per point the step is timed in blocks and the fastest block counts (the machine
may be shared). The matmul peak is a large square torch GEMM measured in the same run, before and
after the sweeps (the best of the two); the peak line is the GEMM FLOPs of a member-step at that
rate, the least time a member-step can take. Where the measured time is far above the line the
ensemble is overhead-bound (per-op and per-step costs); where it runs along it, GEMM-bound.

    python bench/scaling.py                # the full grid (a few minutes on 2 cores)
    python bench/scaling.py --quick        # fewer points, under a minute
    python bench/scaling.py --threads 1    # one torch thread (a loaded, shared machine)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its engine.py would shadow the
# engine package: drop that entry, and reach bench/engine.py as bench.engine from the repository root.
ROOT = Path(__file__).resolve().parents[1]
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.engine import FLUSH_EVERY, matmul_peak, mlp_gemm_flops  # noqa: E402
from engine.config import ModelConfig  # noqa: E402
from engine.trainer import train_ensemble  # noqa: E402

IN_DIM, CLASSES, BATCH = 40, 10, 128  # MNIST-1D's shape, the engine benchmark's batch


@dataclass
class Point:
    k: int
    width: int
    depth: int
    seconds: float  # per ensemble step

    @property
    def dims(self) -> list[int]:
        return [IN_DIM] + [self.width] * (self.depth - 1) + [CLASSES]

    @property
    def member_step(self) -> float:
        return self.seconds / self.k

    @property
    def flops(self) -> float:
        """GEMM FLOPs of one member-step (forward, backward; the θ0 forward counted once per member:
        every member has its own seed here)."""
        forward, backward = mlp_gemm_flops(self.dims, BATCH)
        return 2 * forward + backward


def time_step(k: int, width: int, depth: int, budget_s: float) -> Point:
    """Seconds per ensemble step of K members (distinct seeds, centered), fastest of a few blocks."""
    from engine.models import build_model

    model = build_model(ModelConfig(arch="mlp", width=width, depth=depth), (IN_DIM,), CLASSES)
    params, params0 = model.init_pair(range(k), dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, IN_DIM, generator=gen)
    label = torch.randint(0, CLASSES, (BATCH,), generator=gen)
    target = torch.nn.functional.one_hot(label, CLASSES).float()
    gamma = torch.ones(k)
    step_size = torch.full((k,), 1e-6)  # a real update, too small to move anything far

    def step() -> None:
        model.train_step(params, params0, x, target, label, gamma, step_size)

    t0 = time.perf_counter()
    step()  # warm-up: buffers, kernel selection
    once = max(time.perf_counter() - t0, 1e-6)
    steps = max(1, min(50, int(budget_s / 3 / once)))
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        best = min(best, (time.perf_counter() - t0) / steps)
    return Point(k, width, depth, float(best))


def sweep_spec(quick: bool) -> str:
    """A small sweep: 3 γ × 4 η of an L = 3 MLP on MNIST-1D, no costly metrics."""
    width, steps = (64, 300) if quick else (128, 1000)
    return f"""
name = "bench-scaling"
[model]
width = {width}
depth = 3
[data]
dataset = "mnist1d"
[train]
batch_size = {BATCH}
steps = {steps}
dtype = "float32"
eval_points = 0
metrics = []
[grid]
gamma = [0.1, 1.0, 10.0]
eta = [0.001, 0.003, 0.01, 0.03]
seeds = [0]
"""


def end_to_end(quick: bool, threads: int) -> tuple[float, float, int]:
    """(engine seconds, `gamma-lab sweep --wait` seconds, cells) for the same small sweep."""
    from tasks.planner import pack
    from tasks.spec import SweepSpec

    text = sweep_spec(quick)
    units = pack(SweepSpec.from_toml(text).cells()).units
    with tempfile.TemporaryDirectory(prefix="gamma-lab-scaling-") as tmp:
        t0 = time.perf_counter()
        for unit in units:
            train_ensemble(unit.configs, data_root=Path(tmp), flush_every=FLUSH_EVERY)
        engine_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="gamma-lab-scaling-") as tmp:
        spec = Path(tmp) / "sweep.toml"
        spec.write_text(text)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GAMMA_LAB_")}
        env.update(GAMMA_LAB_DATA=str(Path(tmp) / "data"), GAMMA_LAB_WORKERS="1", GAMMA_LAB_TORCH_THREADS=str(threads))
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "app.cli", "sweep", str(spec), "--wait"], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        e2e_s = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"gamma-lab sweep --wait failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return engine_s, e2e_s, sum(len(u.configs) for u in units)


def report(title: str, axis: str, points: list[Point], peak: float) -> None:
    print(f"-- {title}")
    print(f"{axis:>6} {'ms/step':>9} {'µs/member-step':>15} {'GFLOP/s':>8} {'of peak':>8} {'vs peak line':>13}")
    for p in points:
        x = {"K": p.k, "N": p.width, "L": p.depth}[axis]
        rate = p.flops / p.member_step
        print(f"{x:>6} {p.seconds * 1e3:9.2f} {p.member_step * 1e6:15.1f} {rate / 1e9:8.1f} {rate / peak:8.1%} "
              f"{p.member_step / (p.flops / peak):12.1f}x")  # fmt: skip


Panel = tuple[str, list[tuple[str, list[int], list[Point]]]]  # x label, its series (name, xs, points)
COLOURS = [(31, 119, 180), (214, 39, 40)]


def draw(path: Path, panels: list[Panel], peak: float) -> str:
    """Log-log panels of µs per member-step (measured, and the peak line: GEMM FLOPs / matmul peak)
    as a PNG, drawn with Pillow (streamlit's dependency; matplotlib and kaleido are not installed).
    Returns the path, or why nothing was drawn."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        return "skipped (Pillow is not installed)"
    size, pad = 420, 64
    img = Image.new("RGB", (size * len(panels), size + 40), "white")
    pen = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    for i, (label, series) in enumerate(panels):
        xs = sorted({x for _, sx, _ in series for x in sx})
        ys = [p.member_step * 1e6 for _, _, pts in series for p in pts] + [
            p.flops / peak * 1e6 for _, _, pts in series for p in pts
        ]
        lx, ly = np.log10(xs), np.log10(ys)
        x0, x1 = lx.min() - 0.1, lx.max() + 0.1
        y0, y1 = np.floor(ly.min() * 2) / 2, np.ceil(ly.max() * 2) / 2
        left, right, top, bottom = i * size + pad, (i + 1) * size - 16, 24, size - pad + 24

        def at(x: float, y: float) -> tuple[float, float]:
            fx, fy = (np.log10(x) - x0) / (x1 - x0), (np.log10(y) - y0) / (y1 - y0)  # noqa: B023
            return left + fx * (right - left), bottom - fy * (bottom - top)  # noqa: B023

        pen.rectangle((left, top, right, bottom), outline="black")
        for x in xs:
            px, _ = at(x, 10**y0)
            pen.line((px, bottom, px, bottom + 4), fill="black")
            pen.text((px, bottom + 6), str(x), fill="black", font=font, anchor="ma")
        for e in range(int(np.ceil(y0)), int(np.floor(y1)) + 1):
            _, py = at(xs[0], 10.0**e)
            pen.line((left - 4, py, left, py), fill="black")
            pen.text((left - 6, py), f"1e{e}", fill="black", font=font, anchor="rm")
        pen.text(((left + right) / 2, bottom + 22), label, fill="black", font=font, anchor="ma")
        pen.text((left, top - 18), "us per member-step (log-log)", fill="black", font=font)
        for j, (name, sx, points) in enumerate(series):
            colour = COLOURS[j % len(COLOURS)]
            measured = [at(x, p.member_step * 1e6) for x, p in zip(sx, points, strict=True)]
            bound = [at(x, p.flops / peak * 1e6) for x, p in zip(sx, points, strict=True)]
            for a, b in zip(measured, measured[1:], strict=False):
                pen.line((a, b), fill=colour, width=2)
            for px, py in measured:
                pen.ellipse((px - 3, py - 3, px + 3, py + 3), fill=colour)
            for a, b in zip(bound, bound[1:], strict=False):  # dashed: every other tenth of the segment
                for t in np.arange(0, 1, 0.2):
                    pen.line((a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[0] + (b[0] - a[0]) * (t + 0.1),
                              a[1] + (b[1] - a[1]) * (t + 0.1)), fill=colour, width=1)  # fmt: skip
            legend = f"{name} (dashed: matmul peak)"
            pen.text((right - 4, top + 6 + 14 * j), legend, fill=colour, font=font, anchor="ra")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return str(path)


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer points and a smaller sweep: under a minute")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default torch's)")
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "scaling.png", help="where to draw the figure")
    ap.add_argument("--no-e2e", action="store_true", help="skip the `gamma-lab sweep --wait` comparison")
    args = ap.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            ap.error(f"--threads must be an integer >= 1 (got {args.threads})")
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    if args.quick:
        ks, widths, depths, budget = [1, 4, 16, 64], [64, 256, 1024], [2, 3, 5], 0.3
    else:
        ks, widths, depths, budget = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512], [64, 128, 256, 512, 1024, 2048], \
            [2, 3, 4, 6, 8], 1.5  # fmt: skip
    load = os.getloadavg()
    print(f"MLP ensemble step, float32, CPU: {os.cpu_count()} cores, {threads} torch thread(s), batch {BATCH}, "
          f"input {IN_DIM}, {CLASSES} classes; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")  # fmt: skip
    peaks = [matmul_peak(torch.float32)]
    by_k = {n: [time_step(k, n, 3, budget) for k in ks] for n in (64, 256)}
    by_width = [time_step(16, n, 3, budget) for n in widths]
    by_depth = [time_step(16, 256, depth, budget) for depth in depths]
    peaks.append(matmul_peak(torch.float32))
    peak = max(peaks)
    print(f"matmul peak (2048² sgemm, before / after): {' / '.join(f'{p / 1e9:.1f}' for p in peaks)} GFLOP/s")
    for n, points in by_k.items():
        report(f"against K (width {n}, L = 3)", "K", points, peak)
    report("against the width (K = 16, L = 3)", "N", by_width, peak)
    report("against the depth (K = 16, width 256)", "L", by_depth, peak)
    out: dict[str, float] = {}
    for n, points in by_k.items():
        out[f"k_speedup_{n}"] = points[0].member_step / min(p.member_step for p in points)
        print(f"width {n}: K = 1 → best K, {out[f'k_speedup_{n}']:.1f}x less time per member-step")
    everything = by_k[64] + by_k[256] + by_width + by_depth
    out["best_fraction"] = max(p.flops / p.member_step for p in everything) / peak
    print(f"best point at {out['best_fraction']:.0%} of the matmul peak")
    if not args.no_e2e:
        engine_s, e2e_s, cells = end_to_end(args.quick, threads)
        out["e2e_ratio"] = e2e_s / engine_s
        print(f"-- end to end, {cells} cells: engine (train_ensemble in this process) {engine_s:.2f} s; "
              f"`gamma-lab sweep --wait` {e2e_s:.2f} s; ratio {out['e2e_ratio']:.2f}x "
              f"(process start, data, recording and polling cost {e2e_s - engine_s:.2f} s)")  # fmt: skip
    panels: list[Panel] = [
        ("K (members), L = 3", [(f"N = {n}", ks, points) for n, points in by_k.items()]),
        ("width N (K = 16, L = 3)", [("K = 16", widths, by_width)]),
        ("depth L (K = 16, N = 256)", [("K = 16", depths, by_depth)]),
    ]
    where = draw(args.png, panels, peak)
    print(f"figure: {where}")
    return out


if __name__ == "__main__":
    main()
