"""When the costly metrics run, and what they cost against training (issue #13 item 5).

`eval_schedule` is the trainer's: eval_points log-spaced steps, at most one per EVAL_STEPS_PER_POINT
steps of the run. `diagnostics_cost` is a cheap model of each metric's share of the training time,
for the Launch page; it needs only the config (no torch here: the dashboard imports it).

The model counts cost in training steps of the ensemble (a step ≈ 3 forward passes on a batch: the
forward and a backward twice its cost), per eval:

  test        a forward of θ on the held-out set (θ0's is computed once per unit): ≈ (2/3)·n_test / B
  alignment   the features' forward on the probe, ≈ P / (3B), and the NTK on the first P' ≤ 64
              probe points: the MLP's closed form ≈ 0.75·C·P' / B; other architectures take P'·C
              backward passes (jacobians, member by member) ≈ (2/3)·C·P'² / B
  sharpness   Lanczos: about 30 Hessian-vector products on the probe at the first eval (a random
              start) and 4 warm-started after, each ≈ 2·P / B for the MLP's hand-written product,
              ≈ 3.5·P / B by double backward for the other architectures
  movement    one pass over the weights: ≈ 0

The constants are fitted to the 36-cell MLP of bench/engine.py (width 256, L = 3, batch 128, probe 128,
test set 1000; CPU, one thread), where one eval measured ≈ 5 (test), 4 (alignment), 11 warm and 23
cold (sharpness) training steps. They are estimates for choosing settings, not promises.
"""

from __future__ import annotations

import numpy as np

from engine.config import RunConfig

# One eval of the default costly metrics costs about 20 training steps (above): 30 evals of a 200-step
# run cost 2.5× its training. At most one eval per 20 steps keeps them near training's own cost; runs
# of 600+ steps keep all 30 of the default.
EVAL_STEPS_PER_POINT = 20
EVAL_MIN_POINTS = 5  # short runs (tests, a first look) keep a few
NTK_PROBE_MAX = 64  # engine.trainer.NTK_PROBE_MAX
# Lanczos stops each eval when every member is done (engine.trainer.SHARPNESS_TOL): on the benchmark
# grid (bench/sharpness.py) ~30 products from the random start, 1–8 warm-started after
SHARPNESS_PRODUCTS_COLD = 30
SHARPNESS_PRODUCTS_WARM = 4
# one Hessian-vector product on B points, in training steps on B points: the MLP's hand-written one
# (engine.mlp.MLP.hvp_operator) and double backward for the other architectures
HVP_STEPS_MLP = 2.0
HVP_STEPS_AUTOGRAD = 3.5


def eval_steps(steps: int, points: int) -> list[int]:
    """Log-spaced 0-based steps for the costly metrics, always with step 0 and the last step.

    About `points` distinct steps (fewer when `steps` is small); [] when points is 0."""
    if points <= 0 or steps <= 0:
        return []
    if points == 1:
        return [steps - 1]
    grid = np.unique(np.round(np.geomspace(1, steps, points)).astype(np.int64) - 1)
    return sorted({0, steps - 1, *(int(s) for s in grid)})


def eval_schedule(steps: int, points: int) -> list[int]:
    """The steps the costly metrics run at: eval_steps with at most max(EVAL_MIN_POINTS,
    steps // EVAL_STEPS_PER_POINT) points, so that their cost follows the run's length. Only the
    diagnostics' schedule depends on it: training, train_loss and the summaries are unchanged (the
    last step is always evaluated, so final_test_* is too)."""
    return eval_steps(steps, min(points, max(EVAL_MIN_POINTS, steps // EVAL_STEPS_PER_POINT)))


def eval_cost_steps(cfg: RunConfig) -> dict[str, float]:
    """Each costly metric's cost over the whole run, in training steps of the ensemble (the model in
    the module docstring), for the metrics the config asks for."""
    t, batch = cfg.train, cfg.train.batch_size
    n_evals = len(eval_schedule(t.steps, t.eval_points))
    if n_evals == 0:
        return {}
    probe = t.probe_size
    probe_ntk = min(NTK_PROBE_MAX, probe)
    classes = max(1, cfg.data.n_classes)
    cost: dict[str, float] = {}
    for metric in t.metrics:
        if metric == "test":
            cost[metric] = n_evals * (2 / 3) * cfg.data.test_size / batch
        elif metric == "alignment":
            ntk = 0.75 * classes * probe_ntk if cfg.model.arch == "mlp" else (2 / 3) * classes * probe_ntk**2
            cost[metric] = n_evals * (probe / 3 + ntk) / batch
        elif metric == "sharpness":
            hvps = SHARPNESS_PRODUCTS_COLD + (n_evals - 1) * SHARPNESS_PRODUCTS_WARM
            per = HVP_STEPS_MLP if cfg.model.arch == "mlp" else HVP_STEPS_AUTOGRAD
            cost[metric] = hvps * per * probe / batch
        elif metric == "movement":
            cost[metric] = 0.0
    return cost


def diagnostics_cost(cfg: RunConfig) -> dict[str, float]:
    """Each costly metric's estimated time as a fraction of the run's training time (0.5: half as
    long again as training alone)."""
    return {metric: steps / max(1, cfg.train.steps) for metric, steps in eval_cost_steps(cfg).items()}
