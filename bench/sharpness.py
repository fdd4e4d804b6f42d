"""Benchmark: the sharpness diagnostic, Lanczos (engine.metrics.top_hessian_eigenvalue_lanczos) against
the trainer's power iteration (issue #13 item 5), as a candidate for the trainer. Prints times,
Hessian-vector product counts, errors and ratios; asserts nothing.

In ONE run, side by side, on bench/engine.py's grid (36 cells, L = 3 MLP of width 256, batch 128, 200
steps, MNIST-1D) with only the sharpness metric at the default eval points, each round times
train_on_stream with

  none     no costly metrics (training alone)
  power    the trainer's: power iteration, SHARPNESS_ITERS_COLD products cold, SHARPNESS_ITERS_WARM warm
  lanczos  Lanczos, warm-started, with at most as many products (LANCZOS_COLD, LANCZOS_WARM), stopped
           earlier when every member's Ritz residual is ≤ LANCZOS_TOL·θ

and prints each arm's diagnostics time (arm − none) as a fraction of training and power / lanczos.
Then, in float64, the same grid's sharpness values by both methods against a reference (Lanczos to a
residual of 1e-10·θ, up to 300 products) at every eval step: the relative errors, median and max.

    python bench/sharpness.py              # the 36-cell grid, 2 rounds
    python bench/sharpness.py --quick      # 6 cells, width 32, 40 steps, 1 round
    python bench/sharpness.py --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.engine import FLUSH_EVERY, make_grid  # noqa: E402
from engine import metrics as M  # noqa: E402
from engine import trainer  # noqa: E402
from engine.config import RunConfig  # noqa: E402
from engine.data import make_stream  # noqa: E402
from engine.ensemble import Params  # noqa: E402

COUNT = {"hvps": 0}
LANCZOS_COLD, LANCZOS_WARM, LANCZOS_TOL = 20, 8, 1e-3  # the candidate's caps and tolerance


def _method(kind: str) -> Any:
    """An _Evaluator._sharpness with the given method ('power', 'lanczos', 'reference'), counting
    Hessian-vector products (the graph's build counts as one, as in engine.diagnostics_cost)."""

    def sharpness(self: Any, ens: Any) -> torch.Tensor:
        model, gamma, loss_kind = self.model, ens.gamma, self.loss_kind
        px, py, pl = self.probe.x, self.probe.target, self.probe.label
        g0 = self._readout0(ens, "probe", px)

        def probe_loss(p: Params) -> torch.Tensor:
            return M.loss_fn(loss_kind, trainer._output(model, p, g0, px, gamma), py, pl)

        gen = torch.Generator(device=gamma.device).manual_seed(0)
        cold = ens.eig_vec is None
        if kind == "power":
            iters = trainer.SHARPNESS_ITERS_COLD if cold else trainer.SHARPNESS_ITERS_WARM
            value, ens.eig_vec = M.top_hessian_eigenvalue(probe_loss, ens.params, iters, ens.eig_vec, gen)
        else:
            cap = (LANCZOS_COLD if cold else LANCZOS_WARM) if kind == "lanczos" else 300
            tol = LANCZOS_TOL if kind == "lanczos" else 1e-10
            value, ens.eig_vec, iters = M.top_hessian_eigenvalue_lanczos(
                probe_loss, ens.params, cap, ens.eig_vec, gen, tol=tol
            )
        COUNT["hvps"] += iters + 1
        return value

    return sharpness


def run(configs: list[RunConfig], kind: str | None) -> tuple[float, dict[tuple[int, int], float]]:
    """(seconds, sharpness by (member, step)) of train_on_stream with the given method (None: no metrics)."""
    if kind is None:
        cfgs = configs
    else:
        train = dataclasses.replace(configs[0].train, metrics=("sharpness",), eval_points=30)
        cfgs = [dataclasses.replace(c, train=train) for c in configs]
        trainer._Evaluator._sharpness = _method(kind)  # type: ignore[method-assign]
    values: dict[tuple[int, int], float] = {}

    def keep(batch: Any) -> None:
        for m, s, name, v in zip(batch.member, batch.step, batch.metric, batch.value, strict=True):
            if name == "sharpness":
                values[(int(m), int(s))] = float(v)

    first = cfgs[0]
    stream = make_stream(first.data, batch_size=first.train.batch_size, dtype=getattr(torch, first.train.dtype))
    t0 = time.perf_counter()
    trainer.train_on_stream(cfgs, stream, flush_every=FLUSH_EVERY, on_metrics=keep)
    return time.perf_counter() - t0, values


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--caps", type=int, nargs=2, default=None, help="Lanczos products: cold warm")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.caps is not None:
        global LANCZOS_COLD, LANCZOS_WARM
        LANCZOS_COLD, LANCZOS_WARM = args.caps
    grid = argparse.Namespace(cells=36, width=256, batch=128, steps=200, dataset="mnist1d")
    if args.quick:
        grid.cells, grid.width, grid.steps = 6, 32, 40
    repeat = args.repeat or (1 if args.quick else 2)
    configs = make_grid(grid)
    load = os.getloadavg()
    print(f"grid: {len(configs)} cells, L=3 MLP width {grid.width}, batch {grid.batch}, {grid.steps} steps, "
          f"sharpness at eval_points = 30; {torch.get_num_threads()} torch thread(s), {os.cpu_count()} cores; "
          f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")  # fmt: skip
    original = trainer._Evaluator._sharpness
    try:
        run(configs, "lanczos")  # warm-up
        for i in range(repeat):
            t_none, _ = run(configs, None)
            times, hvps = {}, {}
            for kind in ("power", "lanczos"):
                COUNT["hvps"] = 0
                times[kind], _ = run(configs, kind)
                hvps[kind] = COUNT["hvps"]
            d_pow, d_lan = times["power"] - t_none, times["lanczos"] - t_none
            print(f"round {i + 1}: training {t_none:.2f} s; sharpness by power iteration {d_pow:.2f} s "
                  f"({d_pow / t_none:.2f} of training, {hvps['power']} products), by Lanczos {d_lan:.2f} s "
                  f"({d_lan / t_none:.2f} of training, {hvps['lanczos']} products); "
                  f"power / lanczos {d_pow / d_lan:.1f}x")  # fmt: skip
        train64 = dataclasses.replace(configs[0].train, dtype="float64")
        c64 = [dataclasses.replace(c, train=train64) for c in configs]
        vals = {kind: run(c64, kind)[1] for kind in ("power", "lanczos", "reference")}
        ref = vals["reference"]
        keys = [k for k in ref if np.isfinite(ref[k]) and ref[k] != 0]
        for kind in ("power", "lanczos"):
            err = np.array([abs(vals[kind][k] - ref[k]) / abs(ref[k]) for k in keys])
            print(f"float64, {len(keys)} (member, step) values: {kind} relative error to the reference: "
                  f"median {np.median(err):.1e}, max {err.max():.1e}, above 1e-6: {(err > 1e-6).sum()}")  # fmt: skip
    finally:
        trainer._Evaluator._sharpness = original  # type: ignore[method-assign]
    load = os.getloadavg()
    print(f"load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
