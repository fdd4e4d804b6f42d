"""Preset `same-function`: its ci scale run for real (local workers, the recorder, the snapshots through the
spool into DuckDB) asserts that nets at γ = 10 and 100 differ from each other about as much as seeds do,
and the measure's verdict turns to fail on snapshots whose γ really differ."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.reproduce import SweepData
from tasks.reproduce_same_function import SAME_FUNCTION, TOLERANCE_RATIO, eta_for
from tests.tasks.test_reproduce import _rows, _run_ci


@pytest.mark.slow  # ~25 s: six runs of 600 steps, three of 1293, and the local workers' start
def test_ci_scale_finds_the_same_function_across_gamma(tmp_path: Path) -> None:
    _lines, report = _run_ci(tmp_path, "same-function")
    rows = _rows(report)
    ratios = {q: r for q, r in rows.items() if r["compare"] == "at_most"}  # one budget in steps: the verdict
    assert len(ratios) == 6 and all("(600 steps)" in q for q in ratios)
    for quantity, row in ratios.items():  # the claim, within the tolerance the preset states
        assert row["measured"] is not None and row["measured"] <= 1 + TOLERANCE_RATIO, (quantity, row)
        assert row["verdict"] == "pass"
    assert report["verdict"] == "pass"
    base = rows["1 − linear CKA of the last hidden layer: different seeds, same γ (baseline, 600 steps)"]["measured"]
    init = rows["1 − linear CKA between seeds at initialization (random features)"]["measured"]
    assert 0 < base < init / 3  # training made the representations alike, well beyond random features
    assert len([q for q, r in rows.items() if "same τ" in q and r["verdict"] == "info"]) == 6  # shown, not judged
    assert len(report["figures"]) == 3  # the CKA and output-distance matrices, the CKA matrix at the same τ


def _sweep(gamma: float, arrays: dict[str, dict[str, np.ndarray]]) -> SweepData:
    runs = pd.DataFrame([{"run_id": rid, "gamma": gamma, "eta": eta_for(gamma), "seed": int(rid[-1]),
                          "status": "done", "tail_train_loss": 0.05} for rid in arrays])
    spec = {"name": "s", "model": {"arch": "mlp", "width": 8, "depth": 3},
            "data": {"dataset": "teacher", "input_dim": 6, "n_classes": 3, "test_size": 16},
            "train": {"steps": 10, "metrics": ["function"]}}
    return SweepData(f"g{gamma:g}", spec, runs, load_arrays=lambda: arrays)


def _snapshot(features: np.ndarray, readout: np.ndarray) -> dict[str, np.ndarray]:
    phi = features - features.mean(0)
    return {"output": (features @ readout).astype(np.float32), "gram": (phi @ phi.T).astype(np.float32)}


def test_the_verdict_fails_when_the_gammas_learned_different_functions() -> None:
    rng = np.random.default_rng(0)
    shared, readout = rng.standard_normal((16, 8)), rng.standard_normal((8, 3))

    def runs(gamma: float, base: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        return {f"g{gamma:g}-s{s}": _snapshot(base + 0.1 * rng.standard_normal(base.shape), readout) for s in range(3)}

    alike = SAME_FUNCTION.measure([_sweep(10.0, runs(10.0, shared)), _sweep(100.0, runs(100.0, shared))], "ci")
    assert alike.verdict == "pass"
    other = rng.standard_normal((16, 8))  # γ = 100 learned something else: seeds agree, the γ do not
    apart = SAME_FUNCTION.measure([_sweep(10.0, runs(10.0, shared)), _sweep(100.0, runs(100.0, other))], "ci")
    assert apart.verdict == "fail"
    failed = [r for r in apart.rows if r.verdict == "fail"]
    assert {r.quantity.split(":")[0] for r in failed} >= {"1 − linear CKA of the last hidden layer",
                                                         "relative L2 distance of the outputs"}
    assert all(r.measured > 1 + TOLERANCE_RATIO for r in failed)


def test_too_few_runs_is_a_failure_that_says_why() -> None:
    rng = np.random.default_rng(1)
    one = {"g10-s0": _snapshot(rng.standard_normal((16, 8)), rng.standard_normal((8, 3)))}
    measured = SAME_FUNCTION.measure([_sweep(10.0, one)], "ci")
    assert measured.verdict == "fail"
    ratio_rows = [r for r in measured.rows if r.compare == "at_most"]
    assert ratio_rows and all(not math.isfinite(r.measured) and "need ≥ 2 γ" in r.note for r in ratio_rows)
