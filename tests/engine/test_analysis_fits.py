"""fit_power_law, reparameterize and collapse_score against closed forms and a reference fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from engine.analysis import REPARAMETERIZATIONS, collapse_score, fit_power_law, reparameterize

# ----------------------------------------------------------------------------- power laws


def test_exact_power_law() -> None:
    x = np.logspace(-3, -1, 5)
    fit = fit_power_law(x, 3.5 * x**2)
    assert fit.slope == pytest.approx(2.0, abs=1e-12)
    assert fit.prefactor == pytest.approx(3.5, rel=1e-12)
    assert fit.slope_stderr == pytest.approx(0.0, abs=1e-12)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.n == 5
    assert fit.predict(0.5) == pytest.approx(3.5 * 0.25)


def test_slope_and_stderr_match_the_reference_regression() -> None:
    rng = np.random.default_rng(1)
    x = np.logspace(0, 3, 40)
    y = 0.2 * x ** (2.0 / 3.0) * np.exp(0.1 * rng.standard_normal(x.size))
    fit = fit_power_law(x, y)
    ref = stats.linregress(np.log(x), np.log(y))
    assert fit.slope == pytest.approx(ref.slope, rel=1e-10)
    assert fit.slope_stderr == pytest.approx(ref.stderr, rel=1e-8)
    assert fit.r2 == pytest.approx(ref.rvalue**2, rel=1e-10)
    assert fit.prefactor == pytest.approx(math.exp(ref.intercept), rel=1e-10)
    # The noise is real, so the fitted slope lies within a few standard errors of the truth.
    assert abs(fit.slope - 2.0 / 3.0) < 4 * fit.slope_stderr


def test_unusable_points_are_ignored() -> None:
    x = np.array([1.0, 2.0, 4.0, 8.0, 16.0, -1.0, np.nan, 3.0])
    y = np.array([1.0, 4.0, 16.0, 64.0, np.inf, 5.0, 2.0, 0.0])
    fit = fit_power_law(x, y)
    assert fit.n == 4
    assert fit.slope == pytest.approx(2.0)


def test_two_points_fix_the_slope_but_not_its_error() -> None:
    fit = fit_power_law([1.0, 10.0], [2.0, 20.0])
    assert fit.slope == pytest.approx(1.0) and fit.n == 2
    assert math.isnan(fit.slope_stderr)


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        ([1.0, 2.0, 3.0], [1.0, np.nan, -2.0], "at least 2 points"),
        ([2.0, 2.0, 2.0], [1.0, 2.0, 3.0], "same x"),
        ([1.0, 2.0], [1.0], "one entry per x"),
    ],
)
def test_fit_power_law_rejects_bad_input(x: list, y: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fit_power_law(x, y)


# ----------------------------------------------------------------------------- reparameterizations


def test_reparameterizations() -> None:
    t = np.array([0.0, 1.0, 10.0])
    eta, gamma, L = 0.5, 4.0, 4
    assert np.array_equal(reparameterize(t, eta, gamma, L, "t"), t)
    assert np.allclose(reparameterize(t, eta, gamma, L, "eta_t"), 0.5 * t)
    assert np.allclose(reparameterize(t, eta, gamma, L, "eta_t_over_gamma"), 0.5 * t / 4.0)
    # γ^(2/L) = 4^(1/2) = 2, not γ²/L = 4.
    assert np.allclose(reparameterize(t, eta, gamma, L, "eta_t_over_gamma_2_over_L"), 0.5 * t / 2.0)
    assert set(REPARAMETERIZATIONS) == {"t", "eta_t", "eta_t_over_gamma", "eta_t_over_gamma_2_over_L"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "eta_t_over_gamma_squared"}, "kind"),
        ({"eta": 0.0}, "eta"),
        ({"gamma": math.inf}, "gamma"),
        ({"L": 0}, "L"),
    ],
)
def test_reparameterize_rejects_bad_input(kwargs: dict, match: str) -> None:
    args = {"t": [1.0, 2.0], "eta": 0.1, "gamma": 1.0, "L": 3, "kind": "t"} | kwargs
    with pytest.raises(ValueError, match=match):
        reparameterize(**args)


# ----------------------------------------------------------------------------- collapse


def _plateau_curve(tau: np.ndarray) -> np.ndarray:
    """A plateau at 0.5 that drops around τ = 1 to a floor: the rich-regime shape."""
    return 0.5 / (1.0 + tau**4) + 1e-3


CELLS = [(0.01, 10.0), (0.04, 10.0), (0.02, 40.0), (0.1, 100.0)]  # (η, γ)


def _curves(kind: str, L: int = 3, steps: int = 4000) -> list[tuple[np.ndarray, np.ndarray]]:
    """Loss curves that depend on t only through τ = η t/γ (the time axis of each is its own steps)."""
    t = np.arange(steps, dtype=np.float64)
    out = []
    for eta, gamma in CELLS:
        loss = _plateau_curve(eta * t / gamma)
        out.append((reparameterize(t, eta, gamma, L, kind), loss))
    return out


def test_time_rescaled_curves_collapse_under_the_right_tau_only() -> None:
    right = collapse_score(_curves("eta_t_over_gamma"))
    wrong = collapse_score(_curves("t"))
    also_wrong = collapse_score(_curves("eta_t"))
    assert right.score < 1e-3  # interpolation error only
    assert wrong.score > 0.3
    assert also_wrong.score > 0.3
    assert right.n_curves == len(CELLS)
    assert 0 < right.tau_min < right.tau_max


def test_gamma_to_the_two_over_L_collapse() -> None:
    t = np.arange(1, 3000, dtype=np.float64)
    L = 4
    curves = [(reparameterize(t, e, g, L, "eta_t_over_gamma_2_over_L"), _plateau_curve(e * t / g ** (2 / L) / 5))
              for e, g in CELLS]  # fmt: skip
    assert collapse_score(curves).score < 1e-3
    # γ²/L instead of γ^(2/L) would not collapse them.
    wrong = [(e * t / (g**2 / L), _plateau_curve(e * t / g ** (2 / L) / 5)) for e, g in CELLS]
    assert collapse_score(wrong).score > 0.3


def test_identical_curves_score_zero_and_offsets_score_their_log_ratio() -> None:
    tau = np.logspace(-2, 2, 50)
    loss = _plateau_curve(tau)
    assert collapse_score([(tau, loss), (tau, loss)]).score == pytest.approx(0.0, abs=1e-15)
    # Two curves a constant factor 2 apart: population std of ln is ln(2)/2 at every τ.
    assert collapse_score([(tau, loss), (tau, 2 * loss)]).score == pytest.approx(math.log(2) / 2, rel=1e-12)


def test_diverged_tails_and_tau_zero_are_dropped() -> None:
    tau = np.linspace(0.0, 10.0, 101)  # τ = 0 at step 0
    loss = _plateau_curve(tau)
    broken = loss.copy()
    broken[80:] = np.inf  # diverged: the overlap shrinks to the finite part
    score = collapse_score([(tau, loss), (tau, broken)])
    assert score.score == pytest.approx(0.0, abs=1e-15)
    assert score.tau_max == pytest.approx(tau[79])


@pytest.mark.parametrize(
    ("curves", "match"),
    [
        ([([1.0, 2.0], [1.0, 1.0])], "at least 2 curves"),
        ([([1.0, 2.0], [1.0, 1.0]), ([3.0, 4.0], [1.0, 1.0])], "do not overlap"),
        ([([1.0, 2.0], [1.0, 1.0]), ([1.0, 2.0, 3.0], [1.0, 1.0])], "differ in length"),
        ([([1.0, 2.0], [1.0, 1.0]), ([1.0, 1.0], [1.0, 2.0])], "repeated"),
        ([([1.0, 2.0], [1.0, 1.0]), ([1.0, 2.0], [np.nan, 1.0])], "fewer than 2 points"),
    ],
)
def test_collapse_score_rejects_bad_curves(curves: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        collapse_score(curves)
