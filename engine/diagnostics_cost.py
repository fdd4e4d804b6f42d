"""When the costly metrics run, and what they cost against training (issue #13 item 5).

`eval_plan` is the trainer's schedule: eval_points log-spaced steps, at most one per
EVAL_STEPS_PER_POINT steps of the run (but EVAL_MIN_POINTS on short runs) and no more than the cost
model below fits in train.eval_budget of the training time (but EVAL_MIN_BUDGET_POINTS: the first
step, one between and the last, whatever they cost). `diagnostics_cost` is that model's share of the
training time per metric, for the Launch page; it needs only the config (no torch here: the
dashboard imports it).

The model counts cost in training steps of the ensemble (a step ≈ 3 forward passes on a batch: the
forward and a backward twice its cost), per eval:

  test        a forward of θ on the held-out set (θ0's is computed once per unit): ≈ 0.5·n_test / B
  alignment   the features' forward on the probe, ≈ P / (3B), and the NTK on the first P' ≤ 64
              probe points: the MLP's closed form ≈ 0.64·C·P' / B; other architectures take P'·C
              backward passes (jacobians, member by member) ≈ (2/3)·C·P'² / B
  sharpness   Lanczos on the probe. The MLP's products are restricted to the members not done yet
              (engine.metrics.RESTRICT_AT), so its cost is counted in products of the whole ensemble,
              ≈ 3.5·P / B each with the recurrence's vector work: ~15 at the first eval (from the
              gradient and a random direction) and ~4 at each later one (warm-started; the operator's
              set-up included). The other architectures run every product on every member, by
              double backward (≈ 2.5·P / B): ~20 at the first eval, ~8 at each later one
  movement    one pass over the weights: ≈ 0

The constants are fitted to the 36-cell MLP of bench/engine.py (width 256, L = 3, batch 128, probe 128,
test set 1000, 2 seeds; CPU, two threads, a quiet machine, 2026-12-07), where an eval measured 3.6–4.2
training steps (test), 3.4–3.7 (alignment) and 14 (a warm sharpness), and the first eval's sharpness
51 with every member on its own. A unit whose training step is dearer (many seeds: θ0's forward per
seed) pays fewer steps for the same evals, and a grid with several η per seed and γ evaluates those
members once at step 0 (engine.trainer.DEDUPLICATE_EVALS: a third of the first sharpness on the
benchmark grid): the model counts neither, so it errs high (bench/diagnostics_cost.py prints both).
They are estimates for choosing settings, not promises.

The overhead regime. Those counts are work, and a small MLP's step is not work: at width 32 and batch
32 it is ≈ 0.5 ms of operator dispatch around ≈ 0.03 ms of arithmetic, and an eval, which runs
several times the operators of a step on a few times its examples, costs a few steps, not the tens the
work model counts (the quick demo's defaults were priced at +206% of training; measured, +63%). So in
units of a step's work, a step costs 1 + ρ and an eval its work plus ρ × its overhead-bound cost
(OVERHEAD_*: what an eval measured in steps where overhead is all there is, widths 16 to 64 at batches
16 to 64), where ρ (overhead_ratio) is the step's fixed cost (STEP_OVERHEAD_FLOPS, in FLOPs of work)
over its work for ENSEMBLE_REF members: ρ ≈ 6 for the demo's MLP, 0.05 for the benchmark's. The
unit's own member count would be closer, but the schedule must follow from the run's config alone
(a cell rerun by itself keeps its eval steps). MLPs only: the autograd architectures' steps carry
far more operators of their own, and their model stays the work one. bench/diagnostics_cost.py
--sizes prints the model beside the measured cost from overhead-bound to work-bound sizes: 1.0–2.8×
the measured cost at 200 steps, 1.5–2.5× at 1000 (it errs high, and the schedule with it).
"""

from __future__ import annotations

import numpy as np

from engine.config import RunConfig, TrainConfig
from engine.memory import FLOPS_PER_PARAM_PER_EXAMPLE, parameter_count

# One eval of the default costly metrics costs about 21 training steps (above): 30 evals of a 200-step
# run would cost 3× its training. At most one eval per 20 steps keeps them near training's own cost
# (the budget below keeps them within half of it).
EVAL_STEPS_PER_POINT = 20
EVAL_MIN_POINTS = 5  # short runs (tests, a first look) keep a few, where the budget allows
EVAL_MIN_BUDGET_POINTS = 3  # the budget leaves at least the first step, one between and the last
# and no more evals than the cost model puts within train.eval_budget (default 0.5) of the training
# time (issue #13: the diagnostics at most half of training); long runs keep every point asked for
DIAGNOSTICS_BUDGET = TrainConfig.eval_budget
NTK_PROBE_MAX = 64  # engine.trainer.NTK_PROBE_MAX
# Lanczos stops each eval when every member is done (engine.trainer.SHARPNESS_TOL): the MLP's cost in
# products of the whole ensemble (restricted products count by the members they compute; the first
# eval, then each later one), the other architectures' in products (every one on every member)
SHARPNESS_PRODUCTS_COLD = 15
SHARPNESS_PRODUCTS_WARM = 4
SHARPNESS_ITERATIONS_COLD = 20
SHARPNESS_ITERATIONS_WARM = 8
# one Hessian-vector product on B points, in training steps on B points: the MLP's hand-written one
# (engine.mlp.MLP.hvp_operator) with the recurrence's vector work, and double backward for the others
HVP_STEPS_MLP = 3.5
HVP_STEPS_AUTOGRAD = 2.5
# Small MLPs are bound by per-operation overhead, not work (the overhead regime, module docstring):
# a training step's fixed cost, in FLOPs of work at the rate the work runs (≈ 0.4 ms of op dispatch on
# the benchmark CPU at ≈ 1.6·10¹¹ FLOP/s), shared by ENSEMBLE_REF members (not the unit's own count:
# the schedule may depend on the run's config only, never on how the planner packed it)
STEP_OVERHEAD_FLOPS = 6.5e7
ENSEMBLE_REF = 16
# what one eval costs, in training steps, where overhead is all there is: the test set's forward per
# slice of EVAL_CHUNK_CPU examples (engine.trainer), the alignment, a warm sharpness and the first one
OVERHEAD_TEST_STEPS = 1.0
OVERHEAD_TEST_STEPS_PER_SLICE = 0.4
EVAL_CHUNK_CPU = 128  # engine.trainer.EVAL_CHUNK_CPU
OVERHEAD_ALIGNMENT_STEPS = 5.5
OVERHEAD_SHARPNESS_STEPS_WARM = 10.0
OVERHEAD_SHARPNESS_STEPS_COLD = 100.0


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
    steps // EVAL_STEPS_PER_POINT) points, so that their cost follows the run's length, and at most
    max(EVAL_MIN_BUDGET_POINTS, budget) (budget: the most evals whose estimated cost stays within
    train.eval_budget of training, eval_budget; None: no such bound). Only the diagnostics' schedule
    depends on it: training, train_loss and the summaries are unchanged (the last step is always
    evaluated, so final_test_* is)."""
    most = max(EVAL_MIN_POINTS, steps // EVAL_STEPS_PER_POINT)
    if budget is not None:
        most = min(most, max(EVAL_MIN_BUDGET_POINTS, budget))
    return eval_steps(steps, min(points, most))


def eval_plan(cfg: RunConfig) -> list[int]:
    """The trainer's eval steps for a run config: eval_schedule bounded by eval_budget (none when
    train.eval_budget is 0)."""
    t = cfg.train
    return eval_schedule(t.steps, t.eval_points, eval_budget(cfg) if t.eval_budget > 0 else None)


def overhead_ratio(cfg: RunConfig) -> float:
    """ρ: a training step's fixed cost over its work, for ENSEMBLE_REF members of this config (0 where
    the model counts work only: the architectures trained through autograd)."""
    if cfg.model.arch != "mlp":
        return 0.0
    work = FLOPS_PER_PARAM_PER_EXAMPLE * parameter_count(cfg) * cfg.train.batch_size * ENSEMBLE_REF
    return STEP_OVERHEAD_FLOPS / (work * (2.0 if cfg.resolved_dtype == "float64" else 1.0))


def _work_per_eval(cfg: RunConfig) -> tuple[dict[str, float], dict[str, float]]:
    """Each asked-for costly metric's work (the model in the module docstring), in training steps of
    the ensemble: (per eval, once per run on top: the sharpness's cold start)."""
    t, batch = cfg.train, cfg.train.batch_size
    probe = t.probe_size
    probe_ntk = min(NTK_PROBE_MAX, probe)
    classes = max(1, cfg.data.n_classes)
    per: dict[str, float] = {}
    once: dict[str, float] = {}
    for metric in t.metrics:
        if metric == "test":
            per[metric] = 0.5 * cfg.data.held_out_size / batch
        elif metric == "alignment":
            ntk = 0.64 * classes * probe_ntk if cfg.model.arch == "mlp" else (2 / 3) * classes * probe_ntk**2
            per[metric] = (probe / 3 + ntk) / batch
        elif metric == "sharpness":
            if cfg.model.arch == "mlp":
                product, cold, warm = HVP_STEPS_MLP, SHARPNESS_PRODUCTS_COLD, SHARPNESS_PRODUCTS_WARM
            else:
                product, cold, warm = HVP_STEPS_AUTOGRAD, SHARPNESS_ITERATIONS_COLD, SHARPNESS_ITERATIONS_WARM
            per[metric] = warm * product * probe / batch
            once[metric] = (cold - warm) * product * probe / batch
        elif metric == "movement":
            per[metric] = 0.0
    return per, once


def _overhead_per_eval(cfg: RunConfig) -> tuple[dict[str, float], dict[str, float]]:
    """The same where per-operation overhead is all there is (the MLP's overhead regime), in steps."""
    per: dict[str, float] = {}
    once: dict[str, float] = {}
    for metric in cfg.train.metrics:
        if metric == "test":
            slices = -(-cfg.data.held_out_size // EVAL_CHUNK_CPU)
            per[metric] = OVERHEAD_TEST_STEPS + OVERHEAD_TEST_STEPS_PER_SLICE * slices
        elif metric == "alignment":
            per[metric] = OVERHEAD_ALIGNMENT_STEPS
        elif metric == "sharpness":
            per[metric] = OVERHEAD_SHARPNESS_STEPS_WARM
            once[metric] = OVERHEAD_SHARPNESS_STEPS_COLD - OVERHEAD_SHARPNESS_STEPS_WARM
        elif metric == "movement":
            per[metric] = 0.0
    return per, once


def _cost_per_eval(cfg: RunConfig) -> tuple[dict[str, float], dict[str, float]]:
    """Each asked-for costly metric's cost in training steps of the ensemble: (per eval, once per run on
    top). Work and overhead weighted by ρ (overhead_ratio): a step costs 1 + ρ in units of its work, an
    eval its work plus its overhead-bound steps × ρ; ρ → 0 gives the work model, ρ → ∞ the overhead one."""
    work_per, work_once = _work_per_eval(cfg)
    rho = overhead_ratio(cfg)
    if rho <= 0:
        return work_per, work_once
    over_per, over_once = _overhead_per_eval(cfg)

    def blend(work: dict[str, float], over: dict[str, float]) -> dict[str, float]:
        return {m: (w + rho * over.get(m, 0.0)) / (1.0 + rho) for m, w in work.items()}

    return blend(work_per, over_per), blend(work_once, over_once)


def eval_budget(cfg: RunConfig) -> int:
    """The most evals whose estimated cost (the sharpness's cold start included) stays within
    train.eval_budget × the run's training steps (at least 1; eval_schedule still keeps
    EVAL_MIN_BUDGET_POINTS)."""
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
