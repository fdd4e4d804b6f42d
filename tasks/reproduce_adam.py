"""The `adam` preset of `gamma-lab reproduce` (issue 11, preset 9): η*(γ) and η_max(γ) slopes under
Adam beside SGD's, on the same γ–η grid (two sweeps a side: train.optimizer "sgd" and "adam").

Prediction (gamma-lab's derivation, engine/optim.py; the paper's appendix value was not available
to us, so the "paper" column of the Adam rows holds this prediction). Adam's step is ~ sign(gradient)
× its per-layer rate, whatever the gradient's size, and the rates make one step move every hidden
pre-activation by O(η) and f by O(η/γ):

- lazy side (γ ≪ 1): the function must move by O(1), i.e. the raw readout by O(γ); a step moves it
  by O(η), so the best rate is η* ∝ γ (slope 1; SGD: 2, its NTK ∝ 1/γ²). A too-large step does not
  diverge the way SGD's does (a sign step is bounded): the loss it throws up is ~ (η/γ)², which
  crosses the engine's divergence threshold, divergence_factor × max(1, 1/γ²) × the step-0 loss, at
  an η that does not depend on γ: η_max slope 0 (SGD: 2).
- rich side (γ ≫ 1): as in the deep linear chain, the L layers must grow until their product
  reaches γ, each by η per step: every layer ends at ~ γ^(1/L) and a step is stable and useful while
  η stays below that scale: η* and η_max ∝ γ^(1/L) (slope 1/L; SGD: 2/L). Sign-like steps halve
  SGD's exponents on both sides.

Tolerances are those of the SGD presets (lazy 0.3, rich 0.15), fixed before any measurement. At the
ci scale the rich side is left out (Adam's autograd step costs several times the MLP's hand-written
SGD step); small and paper measure both sides.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

from tasks.reproduce import Measurement, Preset, Row, SweepData

LAZY_TOLERANCE, RICH_TOLERANCE = 0.3, 0.15
OPTIMIZERS = ("sgd", "adam")


def _decades(lo: float, hi: float, per_decade: int) -> dict[str, float]:
    return {"from": 10.0**lo, "to": 10.0**hi, "per_decade": per_decade}


def _pair(
    name: str,
    model: dict[str, Any],
    data: dict[str, Any],
    train: dict[str, Any],
    gammas: list[float],
    eta: dict[str, float],
    seeds: tuple[int, ...] = (0,),
) -> list[dict[str, Any]]:
    """The same grid under SGD and Adam: two specs, SGD first."""
    from tasks.reproduce_presets import _spec  # here, not at import: reproduce_presets imports this module

    return [_spec(f"{name}-{opt}", model, data, train | {"optimizer": opt}, gammas, eta, seeds) for opt in OPTIMIZERS]


def _adam_specs(scale: str) -> list[dict[str, Any]]:
    from tasks.reproduce_presets import LAZY_DATA, LAZY_TRAIN, RICH_DATA
    from tasks.reproduce_presets import _decades as decade_list

    relu = {"activation": "relu"}
    if scale == "paper":
        specs = _pair("reproduce-adam-lazy-paper", relu | {"width": 1024, "depth": 3}, {"dataset": "mnist1d"},
                      {"batch_size": 128, "steps": 2000, "dtype": "float64"}, decade_list(-4, -1, 0.5),
                      _decades(-9, 1.5, 8), (0, 1))  # fmt: skip
        for depth in (2, 3, 4):
            specs += _pair(f"reproduce-adam-rich-L{depth}-paper", relu | {"width": 1024, "depth": depth},
                           {"dataset": "mnist1d"}, {"batch_size": 128, "steps": 10000}, decade_list(1, 3, 0.25),
                           _decades(-3, 4, 8), (0, 1))  # fmt: skip
        return specs
    # lazy: the lazy-scaling preset's setting, its η grid widened up to Adam's η_max (about 10)
    width, gammas = (32, decade_list(-3, -1, 1.0)) if scale == "ci" else (64, decade_list(-3, -1, 0.5))
    specs = _pair(f"reproduce-adam-lazy-{scale}", relu | {"width": width, "depth": 3}, LAZY_DATA, LAZY_TRAIN,
                  gammas, _decades(-6, 1.5, 4))  # fmt: skip
    if scale == "small":  # rich: width 32, 600 steps (as rich-scaling's ci), L = 2 and 3
        for depth in (2, 3):
            specs += _pair(f"reproduce-adam-rich-L{depth}-small", relu | {"width": 32, "depth": depth}, RICH_DATA,
                           {"batch_size": 64, "steps": 600}, decade_list(1, 3, 0.5), _decades(-2, 4, 4))  # fmt: skip
    return specs


def _optimizer(data: SweepData) -> str:
    return str((data.spec.get("train") or {}).get("optimizer", "sgd"))


def _predicted(optimizer: str, lazy: bool, depth: int) -> dict[str, float]:
    """The slopes each optimizer is expected to show (module docstring): η_max, η*."""
    if optimizer == "sgd":
        return {"eta_max": 2.0, "eta_star": 2.0} if lazy else {"eta_max": 2.0 / depth, "eta_star": 2.0 / depth}
    return {"eta_max": 0.0, "eta_star": 1.0} if lazy else {"eta_max": 1.0 / depth, "eta_star": 1.0 / depth}


def _measure_adam(sweeps: list[SweepData], _scale: str) -> Measurement:
    from tasks.reproduce_presets import _loglog, _per_gamma, _slope_row

    rows: list[Row] = []
    figures = []
    slopes: dict[tuple[str, str, int, str], float] = {}
    for i in range(0, len(sweeps) - 1, 2):  # (sgd, adam) pairs on the same grid
        pair = sweeps[i : i + 2]
        depth = int((pair[0].spec.get("model") or {}).get("depth", 3))
        lazy = bool((pair[0].runs["gamma"] < 1).all())
        side = "lazy, γ ≪ 1" if lazy else "rich, γ ≫ 1"
        tolerance = LAZY_TOLERANCE if lazy else RICH_TOLERANCE
        traces = []
        for data in pair:
            opt = _optimizer(data)
            per = _per_gamma(data)
            expected = _predicted(opt, lazy, depth)
            for key, label in (("eta_max", "η_max"), ("eta_star", "η*")):
                row, fit = _slope_row(f"{label} slope vs γ ({opt}, {side}, L={depth})", per["gamma"], per[key],
                                      float(per["spacing"]), expected[key], tolerance)  # fmt: skip
                rows.append(row)
                slopes[(opt, "lazy" if lazy else "rich", depth, key)] = row.measured
                traces.append((f"{opt} {label}", per["gamma"], per[key], "markers+lines"))
                if fit is not None:
                    traces.append((f"{opt} {label} fit: slope {fit.slope:.3f}", per["gamma"],
                                   fit.predict(per["gamma"]), "lines"))  # fmt: skip
        figures.append(_loglog(f"η_max and η* against γ under SGD and Adam ({side}, L={depth})", traces))
        for key, label in (("eta_max", "η_max"), ("eta_star", "η*")):
            s = slopes.get(("sgd", "lazy" if lazy else "rich", depth, key), math.nan)
            a = slopes.get(("adam", "lazy" if lazy else "rich", depth, key), math.nan)
            ratio = a / s if math.isfinite(a) and math.isfinite(s) and s != 0 else math.nan
            rows.append(Row(f"{label} slope, Adam / SGD ({side}, L={depth})", math.nan, ratio, math.nan, 0.0,
                            "info", note="sign-like steps predict 1/2 on the rich side; lazy: 1/2 for η*, 0 for "
                            "η_max"))  # fmt: skip
    steps = ", ".join(sorted({str(d.steps) for d in sweeps}))
    notes = [
        "The 'paper' column of the Adam rows holds gamma-lab's prediction for sign-like steps (module docstring of "
        "tasks/reproduce_adam.py and design.md, 'Adam'), not a number read from the paper's appendix; the SGD rows "
        "hold the paper's main-text exponents.",
        "Adam: β1 = 0.9, β2 = 0.999, ε = 1e-8 of each layer's gradient scale; per-layer rates η/sqrt(fan_in) before "
        "the readout and η at the readout (engine/optim.py). SGD: step N·η.",
        "The lazy Adam η_max slope of 0 belongs to the engine's divergence rule (threshold ∝ max(1, 1/γ²) × the "
        "step-0 loss): a bounded sign-like step cannot run away as SGD's does, it only throws the loss up by "
        "(η/γ)². A threshold that did not scale with 1/γ² would be crossed at η ∝ γ instead (slope 1; not "
        "measured here).",
        f"η* reads the tail statistic (mean train loss over the last 10 % of the {steps} steps); η* on the grid's "
        "edge and η_max not bracketed by the grid are left out of the fits. The rich-side η* valley is flat under "
        "Adam, so its slope is the noisiest number here.",
    ]
    return Measurement(rows, figures, notes)


ADAM = Preset(
    name="adam",
    claim="under Adam (sign-like steps, μP per-layer rates) the exponents change: lazy η* ∝ γ (SGD γ²) and η_max "
    "∝ γ⁰ (SGD γ²); rich η* and η_max ∝ γ^(1/L) (SGD γ^(2/L))",
    paper_ref="the paper's appendix on Adam (SignSGD in the limit); gamma-lab's derivation in engine/optim.py",
    scales={s: partial(_adam_specs, s) for s in ("ci", "small", "paper")},
    measure=_measure_adam,
)
