"""η* and η_max on η grids: closed-form losses, fall-backs, ordering, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.analysis import eta_max, eta_max_bracket, eta_star


def _log_parabola(etas: np.ndarray, eta_true: float, curvature: float = 0.7, floor: float = 0.05) -> np.ndarray:
    """ln loss = ln floor + curvature (ln η − ln η_true)²: η* = eta_true exactly."""
    return floor * np.exp(curvature * (np.log(etas) - math.log(eta_true)) ** 2)


def test_eta_star_recovers_an_off_grid_vertex_exactly() -> None:
    etas = np.logspace(-4, 0, 9)  # half-decade grid
    true = 10.0**-2.3  # between grid points
    result = eta_star(etas, _log_parabola(etas, true))
    assert result.method == "fitted"
    assert result.value == pytest.approx(true, rel=1e-12)
    assert etas[result.index] == pytest.approx(10.0**-2.5)  # the grid minimum


def test_eta_star_on_a_non_uniform_grid() -> None:
    etas = np.array([1e-3, 2e-3, 1.1e-2, 3e-2, 0.5])
    true = 6e-3
    result = eta_star(etas, _log_parabola(etas, true, curvature=2.0))
    assert result.method == "fitted"
    assert result.value == pytest.approx(true, rel=1e-12)


def test_eta_star_ignores_grid_order_and_reports_the_callers_index() -> None:
    etas = np.logspace(-3, 0, 7)
    losses = _log_parabola(etas, 10.0**-1.2)
    perm = np.array([4, 0, 6, 2, 1, 5, 3])
    a, b = eta_star(etas, losses), eta_star(etas[perm], losses[perm])
    assert a.value == pytest.approx(b.value, rel=1e-14)
    assert etas[perm][b.index] == etas[a.index]


@pytest.mark.parametrize("true", [1e-5, 1.0])
def test_eta_star_falls_back_to_the_grid_at_an_edge(true: float) -> None:
    etas = np.logspace(-4, -1, 7)
    result = eta_star(etas, _log_parabola(etas, true))
    assert result.method == "grid"
    assert result.value == (etas[0] if true < 1e-4 else etas[-1])
    assert "edge" in result.reason


def test_eta_star_falls_back_when_a_neighbour_diverged() -> None:
    etas = np.logspace(-4, -1, 7)
    losses = _log_parabola(etas, 10.0**-1.4)
    losses[-1] = np.nan  # the largest η diverged; minimum now sits next to it
    losses[-2] = np.nanmin(losses) * 0.5
    result = eta_star(etas, losses)
    assert result.method == "grid" and result.value == etas[-2]
    assert "diverged" in result.reason


def test_eta_star_with_everything_diverged() -> None:
    result = eta_star([1e-3, 1e-2], [np.inf, np.nan])
    assert result.value is None and result.index is None and result.method == "none"


def test_eta_star_flat_triple_is_not_fitted() -> None:
    result = eta_star([1e-3, 1e-2, 1e-1], [0.2, 0.2, 0.2])
    assert result.method == "grid"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(1e-6, 1e3), min_size=3, max_size=12, unique=True),
    st.lists(st.floats(1e-6, 10.0), min_size=12, max_size=12),
)
def test_eta_star_never_leaves_the_bracket(eta_list: list[float], loss_list: list[float]) -> None:
    etas = np.array(eta_list)
    losses = np.array(loss_list[: etas.size])
    result = eta_star(etas, losses)
    assert result.value is not None
    order = np.sort(etas)
    i = int(np.searchsorted(order, etas[result.index]))
    lo, hi = order[max(i - 1, 0)], order[min(i + 1, order.size - 1)]
    assert lo * (1 - 1e-12) <= result.value <= hi * (1 + 1e-12)
    assert losses[result.index] == losses.min()


@pytest.mark.parametrize(
    ("etas", "losses", "field"),
    [
        ([1e-3, 1e-2], [0.1], "losses"),
        ([1e-3, 1e-3, 1e-2], [0.1, 0.2, 0.3], "etas"),
        ([0.0, 1e-2, 1e-1], [0.1, 0.2, 0.3], "etas"),
        ([], [], "etas"),
        ([[1e-3]], [[0.1]], "losses"),
    ],
)
def test_eta_star_rejects_bad_grids(etas: list, losses: list, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        eta_star(etas, losses)


# ----------------------------------------------------------------------------- η_max


def test_eta_max_monotone_grid() -> None:
    etas = np.logspace(-4, 0, 5)
    assert eta_max(etas, [False, False, False, True, True]) == etas[2]
    assert eta_max_bracket(etas, [False, False, False, True, True]) == (etas[2], etas[3])


def test_eta_max_ignores_stable_islands_above_the_first_divergence() -> None:
    etas = np.array([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    assert eta_max(etas, [False, True, False, False, True]) == 1e-4


def test_eta_max_edge_cases() -> None:
    etas = [1e-3, 1e-2, 1e-1]
    assert eta_max(etas, [True, True, True]) is None
    assert eta_max_bracket(etas, [True, False, False]) == (None, 1e-3)
    # Nothing diverged: the grid's top, and the bracket says the upper end is unknown.
    assert eta_max(etas, [False, False, False]) == 1e-1
    assert eta_max_bracket(etas, [False, False, False]) == (1e-1, None)


def test_eta_max_unsorted_grid() -> None:
    etas = np.array([1e-1, 1e-3, 1.0, 1e-2])
    diverged = np.array([True, False, True, False])
    assert eta_max(etas, diverged) == 1e-2


def test_eta_max_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="diverged"):
        eta_max([1e-3, 1e-2], [False])
