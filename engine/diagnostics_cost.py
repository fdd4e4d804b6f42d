"""When the costly metrics run, and what they cost against training (issue #13 item 5).

`eval_plan` is the trainer's schedule: eval_points log-spaced steps, at most one per
EVAL_STEPS_PER_POINT steps of the run and no more than the cost model below fits in DIAGNOSTICS_BUDGET
of the training time (never fewer than EVAL_MIN_POINTS). `diagnostics_cost` is that model's share of
the training time per metric, for the Launch page; it needs only the config (no torch here: the
dashboard imports it).

The model counts cost in training steps of the ensemble (a step ≈ 3 forward passes on a batch: the
forward and a backward twice its cost), per eval:

  test        a forward of θ on the held-out set (θ0's is computed once per unit): ≈ (2/3)·n_test / B
  alignment   the features' forward on the probe, ≈ P / (3B), and the NTK on the first P' ≤ 64
              probe points: the MLP's closed form ≈ 0.75·C·P' / B; other architectures take P'·C
              backward passes (jacobians, member by member) ≈ (2/3)·C·P'² / B
  sharpness   Lanczos: about 30 Hessian-vector products on the probe at the first eval (a random
              start) and 4 warm-started after, each ≈ 2·P / B for the MLP's hand-written product,
              ≈ 2.5·P / B by double backward for the other architectures
  movement    one pass over the weights: ≈ 0

The constants are fitted to the 36-cell MLP of bench/engine.py (width 256, L = 3, batch 128, probe 128,
test set 1000; CPU), where one eval measured ≈ 5 (test) and 4 (alignment) training steps, and a
Hessian-vector product 1.7–2.5 steps by hand (the MLP), 2.1–2.3 by double backward (two threads,
2026-12-06, a loaded machine: bench/sharpness.py). They are estimates for choosing settings, not promises.
"""

from __future__ import annotations

import numpy as np

from engine.config import RunConfig, TrainConfig

# One eval of the default costly metrics costs about 17 training steps (above): 30 evals of a 200-step
# run would cost 2.5× its training. At most one eval per 20 steps keeps them near training's own cost
# (the budget below keeps them within half of it).
EVAL_STEPS_PER_POINT = 20
EVAL_MIN_POINTS = 5  # short runs (tests, a first look) keep a few
# and no more evals than the cost model puts within train.eval_budget (default 0.5) of the training
# time (issue #13: the diagnostics at most half of training); long runs keep every point asked for
DIAGNOSTICS_BUDGET = TrainConfig.eval_budget
NTK_PROBE_MAX = 64  # engine.trainer.NTK_PROBE_MAX
# Lanczos stops each eval when every member is done (engine.trainer.SHARPNESS_TOL): on the benchmark
# grid (bench/sharpness.py) ~30 products from the random start, 1–8 warm-started after
SHARPNESS_PRODUCTS_COLD = 30
SHARPNESS_PRODUCTS_WARM = 4
# one Hessian-vector product on B points, in training steps on B points: the MLP's hand-written one
# (engine.mlp.MLP.hvp_operator) and double backward for the other architectures
HVP_STEPS_MLP = 2.0
HVP_STEPS_AUTOGRAD = 2.5


def eval_steps(steps: int, points: int) -> list[int]:
    """Log-spaced 0-based steps for the costly metrics, always with step 0 and the last step.

    About `points` distinct steps (fewer when `steps` is small); [] when points is 0."""
    if points <= 0 or steps <= 0:
        return []
    if points == 1:
        return [steps - 1]
    grid = np.unique(np.round(np.geomspace(1, steps, points)).astype(np.int64) - 1)
    return sorted({0, steps - 1, *(int(s) for s in grid)})


def eval_schedule(steps: int, points: int, budget: int | None = None) -> list[int]:
    """The steps the costly metrics run at: eval_steps with at most max(EVAL_MIN_POINTS,
    min(steps // EVAL_STEPS_PER_POINT, budget)) points, so that their cost follows the run's length
    (budget: the most evals whose estimated cost stays within DIAGNOSTICS_BUDGET of training,
    eval_budget; None: no such bound). Only the diagnostics' schedule depends on it: training,
    train_loss and the summaries are unchanged (the last step is always evaluated, so final_test_* is)."""
    most = steps // EVAL_STEPS_PER_POINT if budget is None else min(steps // EVAL_STEPS_PER_POINT, budget)
    return eval_steps(steps, min(points, max(EVAL_MIN_POINTS, most)))


def eval_plan(cfg: RunConfig) -> list[int]:
    """The trainer's eval steps for a run config: eval_schedule bounded by eval_budget (none when
    train.eval_budget is 0)."""
    t = cfg.train
    return eval_schedule(t.steps, t.eval_points, eval_budget(cfg) if t.eval_budget > 0 else None)


def _cost_per_eval(cfg: RunConfig) -> tuple[dict[str, float], dict[str, float]]:
    """Each asked-for costly metric's cost (the model in the module docstring), in training steps of
    the ensemble: (per eval, once per run on top: the sharpness's cold start)."""
    t, batch = cfg.train, cfg.train.batch_size
    probe = t.probe_size
    probe_ntk = min(NTK_PROBE_MAX, probe)
    classes = max(1, cfg.data.n_classes)
    per: dict[str, float] = {}
    once: dict[str, float] = {}
    for metric in t.metrics:
        if metric == "test":
            per[metric] = (2 / 3) * cfg.data.test_size / batch
        elif metric == "alignment":
            ntk = 0.75 * classes * probe_ntk if cfg.model.arch == "mlp" else (2 / 3) * classes * probe_ntk**2
            per[metric] = (probe / 3 + ntk) / batch
        elif metric == "sharpness":
            product = (HVP_STEPS_MLP if cfg.model.arch == "mlp" else HVP_STEPS_AUTOGRAD) * probe / batch
            per[metric] = SHARPNESS_PRODUCTS_WARM * product
            once[metric] = (SHARPNESS_PRODUCTS_COLD - SHARPNESS_PRODUCTS_WARM) * product
        elif metric == "movement":
            per[metric] = 0.0
    return per, once


def eval_budget(cfg: RunConfig) -> int:
    """The most evals whose estimated cost (the sharpness's cold start included) stays within
    train.eval_budget × the run's training steps (at least 1; eval_schedule still keeps
    EVAL_MIN_POINTS)."""
    per, once = _cost_per_eval(cfg)
    each = sum(per.values())
    if each <= 0:
        return cfg.train.steps
    return max(1, int((cfg.train.eval_budget * cfg.train.steps - sum(once.values())) // each))


def eval_cost_steps(cfg: RunConfig) -> dict[str, float]:
    """Each costly metric's cost over the whole run, in training steps of the ensemble (the model in
    the module docstring), for the metrics the config asks for, at the trainer's evals (eval_plan)."""
    n_evals = len(eval_plan(cfg))
    if n_evals == 0:
        return {}
    per, once = _cost_per_eval(cfg)
    return {metric: n_evals * cost + once.get(metric, 0.0) for metric, cost in per.items()}


def diagnostics_cost(cfg: RunConfig) -> dict[str, float]:
    """Each costly metric's estimated time as a fraction of the run's training time (0.5: half as
    long again as training alone)."""
    return {metric: steps / max(1, cfg.train.steps) for metric, steps in eval_cost_steps(cfg).items()}
