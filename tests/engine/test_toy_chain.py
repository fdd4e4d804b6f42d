"""The deep linear chain: closed forms, simulator vs a scalar reference, measured η_max, escape time."""

from __future__ import annotations

import numpy as np
import pytest

from engine.analysis import fit_power_law
from engine.toy import eta_max_theory, eta_star_theory, measure_eta_max, run_chain, simulate_chain

# ----------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("L", [2, 3, 5])
def test_smooth_form_meets_both_asymptotes(L: int) -> None:
    small, large = np.array([1e-4, 1e-3]), np.array([1e5, 1e6])
    assert np.allclose(eta_max_theory(small, L), 2 * small**2 / L, rtol=3e-3)
    assert np.allclose(eta_max_theory(small, L, "lazy"), 2 * small**2 / L)
    # γ^(2/L): to the power 2/L, not γ²/L.
    assert np.allclose(eta_max_theory(large, L), (2 / L) * large ** (2 / L), rtol=1e-4)
    assert np.allclose(eta_max_theory(large, L, "rich"), (2 / L) * large ** (2 / L))
    assert np.allclose(eta_star_theory(large, L), 0.5 * eta_max_theory(large, L))


def test_closed_form_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="form"):
        eta_max_theory(1.0, 3, "intermediate")
    with pytest.raises(ValueError, match="gamma"):
        eta_max_theory(np.array([1.0, -1.0]), 3)
    with pytest.raises(ValueError, match="L"):
        eta_max_theory(1.0, 0)


# ----------------------------------------------------------------------------- simulator


def _reference_chain(gamma: float, eta: float, w0: np.ndarray, steps: int, centered: bool) -> list[float]:
    """One cell, plain Python scalars: the slow path the batched simulator must equal."""
    w = [float(v) for v in w0]
    offset = float(np.prod(w0)) if centered else 0.0
    losses = []
    for _ in range(steps + 1):
        prod = 1.0
        for v in w:
            prod *= v
        residual = (prod - offset) / gamma - 1.0
        losses.append(0.5 * residual**2)
        grads = []
        for i in range(len(w)):
            others = 1.0
            for j, v in enumerate(w):
                if j != i:
                    others *= v
            grads.append(residual * others / gamma)
        w = [v - eta * gr for v, gr in zip(w, grads, strict=True)]
    return losses


@pytest.mark.parametrize("centered", [True, False])
def test_batched_simulator_equals_the_scalar_reference(centered: bool) -> None:
    rng = np.random.default_rng(0)
    L, steps = 3, 40
    gammas = np.array([0.05, 1.0, 20.0])[:, None]  # (3, 1)
    etas = np.array([0.3, 1.0])[None, :] * eta_max_theory(gammas, L)  # (3, 2) well below the edge
    w0 = 1.0 + 0.2 * rng.standard_normal((3, 2, L))  # a different unbalanced start per cell
    run = run_chain(gammas, etas, L, steps, w0, centered=centered, divergence_factor=1e300)
    assert run.losses is not None and run.losses.shape == (3, 2, steps + 1)
    for i in range(3):
        for j in range(2):
            ref = _reference_chain(float(gammas[i, 0]), float(etas[i, j]), w0[i, j], steps, centered)
            assert np.allclose(run.losses[i, j], ref, rtol=1e-8, atol=1e-14)  # cancellation in Π w − Π w(0)


def test_balanced_start_is_centered_and_converges_below_the_edge() -> None:
    gammas = np.array([1e-2, 1.0, 100.0])
    losses = simulate_chain(gammas, 0.5 * eta_max_theory(gammas, 3), 3, 3000)  # (3, 3001)
    assert np.all(losses[:, 0] == 0.5)  # f(0) = 0 exactly, target 1
    assert np.all(losses[:, -1] < 1e-12)


def test_divergence_is_recorded_and_frozen() -> None:
    gamma = np.array([1e-2])
    run = run_chain(gamma, 1.5 * eta_max_theory(gamma, 3), 3, 500)
    assert run.diverged.all() and run.diverged_step[0] > 0
    assert run.losses is not None
    assert np.isinf(run.losses[0, run.diverged_step[0] + 1 :]).all()
    assert np.isfinite(run.losses[0, : run.diverged_step[0] + 1]).all()


def test_outcomes_distinguish_a_slow_plateau_from_failing_above_the_edge() -> None:
    gamma, L = 100.0, 3
    edge = float(eta_max_theory(gamma, L))
    run = run_chain(np.array([gamma]), np.array([1e-3 * edge, 0.9 * edge, 1.05 * edge, 2.0 * edge]), L, 3000)
    slow, ok, above, far_above = range(4)
    assert not run.diverged[slow] and not run.unsettled[slow] and run.final_loss[slow] > 0.4  # on the plateau
    assert not run.diverged[ok] and not run.unsettled[ok] and run.final_loss[ok] < 1e-12
    assert run.unsettled[above] or run.diverged[above]  # bounces around the target, never settles
    # 2× the edge throws u onto the saddle at 0 (loss stalls near 0.51 > 0.5): unsettled too.
    assert run.diverged[far_above] or run.unsettled[far_above]


def test_simulator_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="init"):
        run_chain(1.0, 0.1, 3, 10, np.ones(2))
    with pytest.raises(ValueError, match="init"):
        run_chain(1.0, 0.1, 3, 10, "random")
    with pytest.raises(ValueError, match="steps"):
        run_chain(1.0, 0.1, 3, 0)
    with pytest.raises(ValueError, match="eta"):
        run_chain(1.0, np.array([0.1, np.nan]), 3, 10)


# ----------------------------------------------------------------------------- measured η_max


ETA_GRID = 10.0 ** np.arange(-9.0, 4.01, 0.25)


@pytest.mark.parametrize("L", [2, 3])
def test_lazy_side_eta_max_is_two_gamma_squared_over_L(L: int) -> None:
    gammas = 10.0 ** np.arange(-3.0, -0.99, 0.5)  # 1e-3 … 1e-1
    measured = measure_eta_max(gammas, L, ETA_GRID, refine=4)
    ratio = measured / (2 * gammas**2 / L)
    # Grid + 4 bisections resolve the edge to 10^(0.25/16) ≈ 4 %; γ = 0.1 sits (1+γ)^(2-2/L) below.
    assert np.all((ratio > 0.75) & (ratio <= 1.0)), ratio
    fit = fit_power_law(gammas, measured)
    assert fit.slope == pytest.approx(2.0, abs=0.1)


@pytest.mark.parametrize("L", [2, 3, 4])
def test_rich_side_eta_max_is_two_over_L_gamma_to_the_two_over_L(L: int) -> None:
    gammas = np.array([1e2, 1e3, 1e4])
    measured = measure_eta_max(gammas, L, ETA_GRID, refine=4)
    ratio = measured / ((2 / L) * gammas ** (2 / L))
    assert np.all((ratio > 0.85) & (ratio < 1.05)), ratio
    fit = fit_power_law(gammas, measured)
    assert fit.slope == pytest.approx(2 / L, abs=0.05)


def test_measured_edge_matches_the_smooth_closed_form_across_the_crossover() -> None:
    gammas = np.array([0.3, 1.0, 3.0])
    measured = measure_eta_max(gammas, 3, ETA_GRID, refine=8)
    # 8 bisections of a quarter decade: the bracket is 0.1 % wide; the edge is the closed form.
    assert np.allclose(measured / eta_max_theory(gammas, 3), 1.0, atol=0.01)


def test_unbalanced_start_cannot_beat_the_flattest_minimum() -> None:
    rng = np.random.default_rng(3)
    w0 = 1.0 + 0.3 * rng.standard_normal(3)
    gammas = np.array([1e-2, 1.0, 100.0])
    measured = measure_eta_max(gammas, 3, ETA_GRID, refine=4, init=w0)
    # The minimum manifold is Π w = Π w(0) + γ; its flattest point bounds the edge.
    bound = eta_max_theory(gammas, 3, initial_product=float(np.prod(w0)))
    assert np.all(measured <= bound * 1.001)
    # Lazy side: below 2/NTK(w(0)), NTK = Σ_l (Π_{k≠l} w_k(0))²/γ², GD converges without leaving the
    # linear regime; above it an unbalanced chain can still catapult (the loss grows, the weights
    # rebalance onto a flatter minimum), so the measured edge lies between the two.
    ntk_gamma_squared = sum(float(np.prod(np.delete(w0, i))) ** 2 for i in range(3))
    assert measured[0] >= 0.95 * 2 * gammas[0] ** 2 / ntk_gamma_squared


def test_measure_eta_max_reports_nan_when_the_smallest_eta_fails() -> None:
    result = measure_eta_max(np.array([1e-3]), 3, np.array([1e-3, 1e-2]))  # both far above 6.7e-7
    assert np.isnan(result).all()


# ----------------------------------------------------------------------------- rich plateau


@pytest.mark.parametrize("L", [3, 4])
def test_rich_plateau_escape_takes_gamma_over_eta_steps(L: int) -> None:
    """u' ≈ (η/γ) u^(L−1) from u = 1 blows up at η t/γ = 1/(L−2): escape time ∝ γ/η."""
    scale, escape = [], []
    for gamma in (1e2, 1e3, 1e4):
        for fraction in (0.05, 0.2):
            eta = fraction * float(eta_max_theory(gamma, L))
            steps = int(3 * gamma / eta)
            losses = simulate_chain(gamma, eta, L, steps)
            assert losses[-1] < 1e-6
            escape.append(int(np.argmax(losses < 0.25)))  # half the initial loss of 0.5
            scale.append(gamma / eta)
    fit = fit_power_law(scale, escape)
    assert fit.slope == pytest.approx(1.0, abs=0.1)
    # At the largest γ the escape sits at the continuum blow-up time η t/γ = 1/(L−2).
    assert escape[-1] / scale[-1] == pytest.approx(1 / (L - 2), rel=0.1)
