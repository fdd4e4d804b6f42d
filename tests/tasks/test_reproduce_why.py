"""The 'why' rows of the presets that fail or cannot decide at small scale (issue 11: a preset that fails
says why): the catapult's unsettled window cells sorted into dead / still decreasing / stalled, the
collapse escape fit's censored runs and threshold checks, rich-scaling's unbracketed η_min. Synthetic
series with known answers; the presets' real runs are in test_reproduce.py."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tasks.reproduce_presets import _escape_checks, _eta_min_unbracketed, _unsettled_kind, _unsettled_row

RNG = np.random.default_rng(0)


def _noisy(level: np.ndarray, spread: float = 0.2) -> np.ndarray:
    return level * np.exp(spread * RNG.standard_normal(level.size))  # batch noise, multiplicative


def test_unsettled_kinds_from_the_series() -> None:
    steps = np.arange(1000, dtype=float)
    flat = 2.0 * (1 + 0.3 * (-1.0) ** steps)  # bouncing at the edge, no trend
    falling = _noisy(2.0 * np.exp(-steps / 300))
    assert _unsettled_kind(flat, 0.8) == "stalled"
    assert _unsettled_kind(falling, 0.8) == "decreasing"
    assert _unsettled_kind(np.full(1000, 0.9), 0.0) == "dead"  # every ReLU off: zero Hessian, frozen loss
    assert _unsettled_kind(flat, math.nan) == "stalled"  # no sharpness recorded: read the loss alone


def test_unsettled_row_counts_each_kind() -> None:
    row = _unsettled_row(0.01, 1.0, [1.5, 2.0, 3.0, 4.0, 5.0], [True, False, False, False, False],
                         ["stalled", "dead", "decreasing", "stalled", "stalled"], [0.9, 0.0, 1.0, 0.7, 0.8],
                         [0.5, 1.0, 2.0, 3.0, 4.0], 1000)  # fmt: skip
    assert row.verdict == "info" and row.measured == 4
    assert "1 dead" in row.note and "1 still decreasing" in row.note and "2 stalled" in row.note
    assert "0.70–0.80 × 2/(N·η)" in row.note and "1.00–4.00 × the initial" in row.note
    assert "η/η0 ≤ 1.5" in row.note and "unsettled 2–5" in row.note
    assert _unsettled_row(0.01, 1.0, [2.0], [True], ["stalled"], [0.9], [0.5], 1000).measured == 0


def _plateau(t_escape: float, budget: int = 6000) -> np.ndarray:
    """A loss at 1 until t_escape, then falling tenfold per 10 steps (never, when t_escape ≥ budget)."""
    t = np.arange(budget, dtype=float)
    return 10.0 ** (-np.maximum(t - t_escape, 0.0) / 10)


def test_escape_checks_count_censored_runs_and_read_every_threshold() -> None:
    cells = [(g, e, _plateau(25 * g / e)) for g in (10.0, 30.0, 100.0) for e in (1.0, 2.0, 4.0)]  # t ∝ γ/η
    rows = {r.quantity: r for r in _escape_checks(cells)}
    censored = rows["escape runs censored at the budget"]
    assert censored.measured == 0 and "every curve left the plateau" in censored.note
    assert rows["escape-time exponent of γ at a 10 % drop"].measured == pytest.approx(1.0, abs=0.05)
    assert rows["local escape-time exponent of γ, largest γ pair"].measured == pytest.approx(1.0, abs=0.05)

    cells[-3] = (100.0, 1.0, _plateau(9000))  # γ = 100, η = 1 still on the plateau at step 6000
    rows = {r.quantity: r for r in _escape_checks(cells)}
    censored = rows["escape runs censored at the budget"]
    assert censored.measured == 1 and "γ=100 η=1" in censored.note and "lower bound" in censored.note


def test_unbracketed_eta_min_says_which_side_of_the_grid() -> None:
    etas = [0.3, 1.0, 3.0]

    def table(tails: list[float]) -> pd.DataFrame:
        return pd.DataFrame({"tail": tails, "first": [1.0] * 3}, index=pd.Index(etas, name="eta"))

    gammas = np.array([10.0, 100.0, 1000.0])
    text = _eta_min_unbracketed(gammas, [table([0.1, 0.1, 0.1]), table([0.9, 0.1, 0.1]), table([1.0, 1.0, 1.0])])
    assert "γ = 10: the grid's smallest η = 0.3 already left the plateau" in text
    assert "γ = 1e+03: no η left the plateau" in text and "100" not in text
    assert _eta_min_unbracketed(gammas[1:2], [table([0.9, 0.1, 0.1])]) == ""
