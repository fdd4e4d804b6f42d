"""What the costly metrics cost, said on the Launch page: a caption from engine.diagnostics_cost's
model for the spec's settings (no Streamlit here, so it is testable without a browser)."""

from __future__ import annotations

from typing import Any

from engine.config import RunConfig
from engine.diagnostics_cost import (
    EVAL_MIN_BUDGET_POINTS,
    EVAL_MIN_POINTS,
    EVAL_STEPS_PER_POINT,
    diagnostics_cost,
    eval_plan,
    eval_steps,
    overhead_ratio,
)


def _model_text(cfg: RunConfig) -> str:
    """Which of engine.diagnostics_cost's models priced this config, and how far to trust it."""
    if overhead_ratio(cfg) > 0:
        return ("A cost model fitted on MLPs on the CPU, from small ones bound by per-operation overhead to "
                "work-bound ones, not a measurement (engine/diagnostics_cost.py; it errs high).")  # fmt: skip
    return (f"A cost model of the work alone for the {cfg.model.arch}, not a measurement "
            "(engine/diagnostics_cost.py): on small networks, whose steps are mostly per-operation overhead, "
            "test and sharpness measured several times below it.")  # fmt: skip


def cost_caption(spec: Any) -> str | None:
    """One line: each chosen costly metric's estimated time as a share of training, the total, and how
    many eval steps they run at. None when the spec asks for none."""
    cfg = RunConfig(model=spec.model, data=spec.data, train=spec.train, gamma=1.0, eta=1.0, seed=0)
    cost = diagnostics_cost(cfg)
    if not cost:
        return None
    t = spec.train
    n_evals = len(eval_plan(cfg))
    capped = n_evals < len(eval_steps(t.steps, t.eval_points))
    capped_text = (
        f" (of {t.eval_points} asked: at most one per {EVAL_STEPS_PER_POINT} steps, {EVAL_MIN_POINTS} on short "
        "runs"
        + (f", and what fits in {t.eval_budget:.0%} of the training time, never fewer than "
           f"{EVAL_MIN_BUDGET_POINTS}" if t.eval_budget > 0 else "")
        + ")"
        if capped
        else ""
    )
    parts = ", ".join(f"{m} +{share:.0%}" for m, share in sorted(cost.items(), key=lambda kv: -kv[1]))
    return (
        f"Costly metrics at {n_evals} eval steps{capped_text}, estimated on top of the training time: {parts}; "
        f"in all +{sum(cost.values()):.0%}. {_model_text(cfg)} Sharpness is Lanczos on the probe (most of it at "
        "the first eval), alignment an NTK on up to 64 probe points, test a forward of the held-out set, "
        "movement nearly free."
    )
