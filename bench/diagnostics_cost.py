"""Benchmark: what each costly metric costs against training, measured beside the cost model that sets
the eval schedule and the Launch page's caption (engine/diagnostics_cost.py; issue #13 item 5). Prints
shares of the training time and ratios; asserts nothing.

In ONE run, on bench/engine.py's grid (36 cells: L = 3 MLP of width 256, batch 128, MNIST-1D, float32,
--steps steps) with the defaults' eval points, each round times engine.trainer.train_on_stream with

  none        no costly metrics (training alone)
  test, alignment, sharpness, movement    that metric alone
  defaults    all four (the default train.metrics)

and prints each arm's time beyond training as a share of it (0.5: half as long again as training),
beside the model's share for the same config (each arm on its own schedule: a cheap metric alone gets
more evals within train.eval_budget than the four together). Two grids: "twins", the benchmark's 6 γ × 3 η × 2 seeds,
where the trainer evaluates the 3 η of a seed and γ once at step 0 (engine.trainer.DEDUPLICATE_EVALS:
the model does not count that, so it should overestimate there), and "distinct", 6 γ × 6 seeds at
one η, where it does not apply (the model's constants are checked there).

    python bench/diagnostics_cost.py                 # 200 steps, 2 rounds
    python bench/diagnostics_cost.py --steps 1000    # a longer run: more evals, the cold start amortized
    python bench/diagnostics_cost.py --quick         # 6 cells, width 32, 40 steps, 1 round: a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.engine import FLUSH_EVERY, make_grid  # noqa: E402
from engine.config import RunConfig, TrainConfig  # noqa: E402
from engine.data import make_stream  # noqa: E402
from engine.diagnostics_cost import diagnostics_cost, eval_plan  # noqa: E402
from engine.trainer import train_on_stream  # noqa: E402

DEFAULTS = TrainConfig()
ARMS: dict[str, tuple[str, ...]] = {
    "none": (), **{m: (m,) for m in DEFAULTS.metrics}, "defaults": tuple(DEFAULTS.metrics)
}


def grids(args: argparse.Namespace) -> dict[str, list[RunConfig]]:
    """The benchmark grid ("twins": several η per seed and γ) and one of as many cells, each with its
    own seed ("distinct")."""
    twins = make_grid(args)
    return {"twins": twins, "distinct": [dataclasses.replace(c, eta=twins[0].eta, seed=i) for i, c in enumerate(twins)]}


def with_metrics(configs: list[RunConfig], metrics: tuple[str, ...]) -> list[RunConfig]:
    train = dataclasses.replace(configs[0].train, metrics=metrics, eval_points=DEFAULTS.eval_points if metrics else 0)
    return [dataclasses.replace(c, train=train) for c in configs]


def timed(configs: list[RunConfig]) -> float:
    first = configs[0]
    stream = make_stream(first.data, batch_size=first.train.batch_size, dtype=torch.float32)
    t0 = time.perf_counter()
    train_on_stream(configs, stream, flush_every=FLUSH_EVERY)
    return time.perf_counter() - t0


# MLP sizes for --sizes: (width, batch, cells), from overhead-bound (a step is mostly op dispatch) to
# work-bound (GEMMs); the Launch page's quick demo is (32, 32, 12), the benchmark grid (256, 128, 36)
SIZES = [(16, 16, 4), (32, 32, 12), (64, 32, 8), (64, 64, 12), (128, 64, 12), (128, 128, 24), (256, 128, 36),
         (512, 128, 12)]
QUICK_SIZES = [(16, 16, 4), (64, 64, 8)]


def sized(width: int, batch: int, cells: int, steps: int) -> list[RunConfig]:
    """`cells` cells of bench/engine.py's γ × η grid at one MLP width and batch, each with its own seed (no
    twins at step 0: the model does not count them)."""
    grid = argparse.Namespace(cells=cells, width=width, batch=batch, steps=steps, dataset="mnist1d")
    return [dataclasses.replace(c, seed=i) for i, c in enumerate(make_grid(grid))]


def sizes(args: argparse.Namespace) -> None:
    """--sizes: the defaults' measured share against the model's, MLP sizes from overhead- to work-bound."""
    steps = 100 if args.quick else args.steps
    table = QUICK_SIZES if args.quick else SIZES
    repeat = args.repeat or (1 if args.quick else 2)
    load = os.getloadavg()
    print(f"MLP sizes, L=3, MNIST-1D, {steps} steps, defaults (eval_points = {DEFAULTS.eval_points}, eval_budget = "
          f"{DEFAULTS.eval_budget}); {torch.get_num_threads()} torch thread(s), {os.cpu_count()} cores; "
          f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")  # fmt: skip
    timed(with_metrics(sized(32, 32, 2, 20), ARMS["defaults"]))  # warm-up: one-time costs out of the timings
    print(f"{'width':>5} {'batch':>5} {'cells':>5} {'evals':>5} {'training s':>10} {'measured':>9} {'model':>7} "
          f"{'model/measured':>15}  (the defaults' share of training)")  # fmt: skip
    result: dict[str, float] = {}
    for width, batch, cells in table:
        plain = with_metrics(sized(width, batch, cells, steps), ARMS["none"])
        full = with_metrics(plain, ARMS["defaults"])
        base = float(np.median([timed(plain) for _ in range(repeat)]))
        measured = float(np.median([timed(full) for _ in range(repeat)])) / base - 1
        predicted = sum(diagnostics_cost(full[0]).values())
        ratio = predicted / measured if measured > 0.005 else float("nan")
        print(f"{width:5} {batch:5} {cells:5} {len(eval_plan(full[0])):5} {base:10.2f} {measured:9.2f} "
              f"{predicted:7.2f} {ratio:15.2f}")  # fmt: skip
        key = f"w{width}_b{batch}_k{cells}"
        result[f"{key}_measured"], result[f"{key}_model"] = measured, predicted
    load = os.getloadavg()
    print(f"load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("RESULT " + json.dumps(result))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", action="store_true", help="the defaults across MLP sizes (the model's overhead regime)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.sizes:
        sizes(args)
        return
    grid = argparse.Namespace(cells=36, width=256, batch=128, steps=args.steps, dataset="mnist1d")
    if args.quick:
        grid.cells, grid.width, grid.steps = 6, 32, 40
    repeat = args.repeat or (1 if args.quick else 2)
    configs = grids(grid)
    load = os.getloadavg()
    probe = with_metrics(configs["twins"], ARMS["defaults"])[0]
    print(f"grid: {grid.cells} cells, L=3 MLP width {grid.width}, batch {grid.batch}, {grid.steps} steps, MNIST-1D; "
          f"evals at steps {eval_plan(probe)} (eval_points = {DEFAULTS.eval_points}, eval_budget = "
          f"{DEFAULTS.eval_budget}); {torch.get_num_threads()} torch thread(s), {os.cpu_count()} cores; "
          f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")  # fmt: skip
    timed(with_metrics(configs["twins"], ARMS["defaults"])[:4])  # warm-up: one-time costs out of the timings
    times: dict[tuple[str, str], list[float]] = {}
    for i in range(repeat):
        for name, cells in configs.items():
            for arm, metrics in ARMS.items():
                times.setdefault((name, arm), []).append(timed(with_metrics(cells, metrics)))
        print(f"round {i + 1}: " + "; ".join(f"{n} training {times[n, 'none'][-1]:.2f} s, defaults "
                                           f"{times[n, 'defaults'][-1]:.2f} s" for n in configs))  # fmt: skip
    print(f"{'grid':9} {'metric':10} {'measured':>9} {'model':>7} {'model/measured':>15}  (shares of training)")
    result: dict[str, float] = {}
    for name, cells in configs.items():
        base = float(np.median(times[name, "none"]))
        for arm in ARMS:
            if arm == "none":
                continue
            measured = float(np.median(times[name, arm])) / base - 1
            # the arm's own schedule: a cheap metric alone gets more evals within the budget
            predicted = sum(diagnostics_cost(with_metrics(cells, ARMS[arm])[0]).values())
            ratio = f"{predicted / measured:.2f}" if measured > 0.005 else "-"
            print(f"{name:9} {arm:10} {measured:9.2f} {predicted:7.2f} {ratio:>15}")
            result[f"{name}_{arm}_measured"], result[f"{name}_{arm}_model"] = measured, predicted
    load = os.getloadavg()
    print(f"load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
