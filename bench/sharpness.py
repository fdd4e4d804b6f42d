"""Benchmark: the sharpness diagnostic, the trainer's method against the one it replaced (issue #13
item 5). Prints times, Hessian-vector product counts, errors and ratios; asserts nothing.

In ONE run, side by side, on bench/engine.py's grid (36 cells, L = 3 MLP of width 256, batch 128, 200
steps, MNIST-1D) with only the sharpness metric at the default eval points, each round times
train_on_stream with

  none     no costly metrics (training alone)
  former   the trainer's method until issue #13: power iteration (20 products at the first eval, 8
           warm-started after) on products by double backward (engine.metrics.autograd_hvp), every
           member on its own
  autograd the trainer's Lanczos (engine.trainer.SHARPNESS_*) on products by double backward
  trainer  the trainer's own method: Lanczos on the MLP's hand-written product (engine.mlp.MLP.hvp_operator),
           its products restricted to the members still open (a product here is one batched call,
           whatever the number of members it computes)
  (autograd and trainer evaluate the grid's members of one seed and γ once at step 0, as the trainer
  does: engine.trainer.DEDUPLICATE_EVALS; the reference below evaluates every member on its own)

and prints each arm's diagnostics time (arm − none) as a fraction of training, its product count,
and former / trainer. Then, in float64, the grid's sharpness by former and trainer against a
reference (Lanczos to a residual of 1e-9·θ, up to 300 products) at every eval step: the relative
errors, median and max. (Power iteration finds the eigenvalue largest in magnitude, which can be a
negative one; the sharpness is the largest.)

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
FORMER_COLD, FORMER_WARM = 20, 8  # the power iteration's products before issue #13


TRAINERS = trainer._Evaluator._sharpness  # the trainer's own method, as it is


def _counted_trainer(self: Any, ens: Any, start: Params | None, cold: bool) -> tuple[torch.Tensor, Params]:
    """The trainer's _sharpness as it is (its products restricted to the members still open), counting
    the batched product calls."""
    build = self.model.hvp_operator

    def counting(*args: Any, **kwargs: Any) -> Any:
        op = build(*args, **kwargs)

        def counted(v: Params) -> Params:
            COUNT["hvps"] += 1
            return op(v)

        return counted

    self.model.hvp_operator = counting  # this instance only, for this call
    try:
        return TRAINERS(self, ens, start, cold)
    finally:
        del self.model.hvp_operator


def _method(kind: str) -> Any:
    """An _Evaluator._sharpness with the given method ('former', 'autograd', 'trainer', 'reference'),
    counting Hessian-vector products."""
    if kind == "trainer":
        return _counted_trainer

    def sharpness(self: Any, ens: Any, start: Params | None, cold: bool) -> tuple[torch.Tensor, Params]:
        model, gamma, loss_kind = self.model, ens.gamma, self.loss_kind
        px, py, pl = self.probe.x, self.probe.target, self.probe.label
        g0 = self._readout0(ens, "probe", px)

        def probe_loss(p: Params) -> torch.Tensor:
            return M.loss_fn(loss_kind, trainer._output(model, p, g0, px, gamma), py, pl)

        if kind in ("former", "autograd"):
            op = M.autograd_hvp(probe_loss, ens.params)
        else:
            op = model.hvp_operator(ens.params, px, g0, gamma, loss_kind, py, pl)

        def counted(v: Params) -> Params:
            COUNT["hvps"] += 1
            return op(v)

        gen = torch.Generator(device=gamma.device).manual_seed(0)
        if kind == "former":  # from a random start (the trainer's is the gradient's and a random direction)
            iters = FORMER_COLD if cold else FORMER_WARM
            return M.top_hessian_eigenvalue(None, ens.params, iters, None if cold else start, gen, hvp=counted)
        if kind == "reference":
            cap, tol = 300, 1e-9
        else:
            cap = trainer.SHARPNESS_PRODUCTS_COLD if cold else trainer.SHARPNESS_PRODUCTS_WARM
            tol = trainer.SHARPNESS_TOL
        value, vectors, _ = M.top_hessian_eigenvalue_lanczos(None, ens.params, cap, start, gen, tol=tol, hvp=counted)
        return value, vectors

    return sharpness


def run(configs: list[RunConfig], kind: str | None) -> tuple[float, dict[tuple[int, int], float]]:
    """(seconds, sharpness by (member, step)) of train_on_stream with the given method (None: no metrics)."""
    if kind is None:
        cfgs = configs
    else:
        train = dataclasses.replace(configs[0].train, metrics=("sharpness",), eval_points=30)
        cfgs = [dataclasses.replace(c, train=train) for c in configs]
        trainer._Evaluator._sharpness = _method(kind)  # type: ignore[method-assign]
    # the former trainer evaluated every member on its own; the reference is each member's own value
    trainer.DEDUPLICATE_EVALS = kind not in ("former", "reference")
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
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
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
    arms = ("former", "autograd", "trainer")
    try:
        run(configs, "trainer")  # warm-up
        for i in range(repeat):
            t_none, _ = run(configs, None)
            cost, hvps = {}, {}
            for kind in arms:
                COUNT["hvps"] = 0
                cost[kind] = run(configs, kind)[0] - t_none
                hvps[kind] = COUNT["hvps"]
            parts = ", ".join(
                f"{k} {cost[k]:.2f} s ({cost[k] / t_none:.2f} of training, {hvps[k]} products)" for k in arms
            )
            print(f"round {i + 1}: training {t_none:.2f} s; sharpness: {parts}; "
                  f"former / trainer {cost['former'] / cost['trainer']:.1f}x, "
                  f"autograd / trainer {cost['autograd'] / cost['trainer']:.1f}x")  # fmt: skip
        train64 = dataclasses.replace(configs[0].train, dtype="float64")
        c64 = [dataclasses.replace(c, train=train64) for c in configs]
        vals = {kind: run(c64, kind)[1] for kind in ("former", "trainer", "reference")}
        ref = vals["reference"]
        keys = [k for k in ref if np.isfinite(ref[k]) and ref[k] != 0]
        for kind in ("former", "trainer"):
            err = np.array([abs(vals[kind][k] - ref[k]) / abs(ref[k]) for k in keys])
            print(f"float64, {len(keys)} (member, step) values: {kind} relative error to the reference: "
                  f"median {np.median(err):.1e}, max {err.max():.1e}, above 1e-3: {(err > 1e-3).sum()}")  # fmt: skip
    finally:
        trainer._Evaluator._sharpness = original  # type: ignore[method-assign]
        trainer.DEDUPLICATE_EVALS = True
    load = os.getloadavg()
    print(f"load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
