"""Lazy-side physics on the real engine: η_max ∝ γ² for γ ≪ 1 (design.md §2, issue 2).

The NTK of the μP-γ network scales as 1/γ² (readout divided by N·γ, SGD step N·η), so the largest
convergent η must scale as γ². We train a width-64, L=3 ReLU MLP on the teacher stream at
γ = 1e-3 … 1e-1 (half-decade steps) over a log η grid, all cells as one float64 ensemble, take
η_max per γ with `engine.analysis.eta_max` and fit the slope of ln η_max against ln γ.

The divergence test uses the trainer's default threshold, divergence_factor × max(1, 1/γ²) × the
step-0 loss. Just above the edge of stability the lazy net catapults: the loss first grows by a
factor ~1/γ² (the features must move by O(1) relative, and they move ∝ γ·Δf), then the kernel
flattens and training converges. A fixed factor of 1e3 called catapults at γ = 1e-3 divergences but
not at γ ≳ 3e-2: we measured η_max/γ² = 10, 13, 32, 56 at γ = 1e-3 … 10^-1.5 (slope ≈ 2.5). With
the 1/γ² allowance every catapult resolves and η_max is the largest *convergent* η.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.analysis import eta_max_bracket, fit_power_law
from engine.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from engine.trainer import train_ensemble

GAMMAS = 10.0 ** np.arange(-3.0, -0.99, 0.5)  # (5,) 1e-3 … 1e-1
ETA_GRID = 10.0 ** np.arange(-7.0, 1.01, 0.125)  # one absolute grid, 8 points per decade
# Each γ trains the part of the absolute grid within [γ²·10^0.25, γ²·10^2.75]: the edge sits near
# 50·γ² for this setting. The grid is absolute (not a multiple of γ²), so it cannot build the
# expected slope in; the test checks that the edge falls strictly inside each window.
WINDOW_DECADES = (0.25, 2.75)


def _window(gamma: float) -> np.ndarray:
    lo, hi = gamma**2 * 10.0 ** WINDOW_DECADES[0], gamma**2 * 10.0 ** WINDOW_DECADES[1]
    return ETA_GRID[(ETA_GRID >= lo) & (ETA_GRID <= hi)]


@pytest.mark.slow
def test_lazy_eta_max_scales_as_gamma_squared() -> None:
    model = ModelConfig(arch="mlp", width=64, depth=3, activation="relu", centered=True)
    data = DataConfig(dataset="teacher", input_dim=16, n_classes=2, test_size=16, data_seed=3)
    train = TrainConfig(
        loss="mse", batch_size=32, steps=100, dtype="float64", eval_points=0, metrics=(),
        probe_size=8,
    )  # fmt: skip
    windows = [_window(float(g)) for g in GAMMAS]
    configs = [
        RunConfig(model=model, data=data, train=train, gamma=float(g), eta=float(e), seed=0)
        for g, window in zip(GAMMAS, windows, strict=True)
        for e in window
    ]
    results = train_ensemble(configs)  # every cell shares shapes and dtype: one ensemble
    assert len(results) == len(configs)
    assert {r.status for r in results} <= {"done", "diverged"}

    measured = []
    start = 0
    for gamma, window in zip(GAMMAS, windows, strict=True):
        rows = results[start : start + window.size]
        start += window.size
        diverged = np.array([r.status == "diverged" for r in rows])
        lower, upper = eta_max_bracket(window, diverged)
        # The edge must be resolved inside the window, not censored by its ends.
        assert lower is not None and upper is not None, f"γ={gamma:.3g}: η_max not bracketed by {window}"
        # The edge is sharp: a quarter decade above the first divergence every cell diverges. (A
        # single stable cell just above it does occur — the catapult's end is chaotic there — and
        # `eta_max` then takes the contiguous stable range, i.e. the lower value.)
        far_above = window >= upper * 10.0**0.25 * (1 - 1e-9)
        assert far_above.any() and diverged[far_above].all(), f"γ={gamma:.3g}: stable cells far above the edge"
        measured.append(lower)

    fit = fit_power_law(GAMMAS, np.array(measured))
    assert fit.n == GAMMAS.size
    assert abs(fit.slope - 2.0) <= 0.3, f"slope {fit.slope:.3f} ± {fit.slope_stderr:.3f}; η_max = {measured}"
    assert fit.r2 > 0.98
