"""The adaptive protocol: the round planner, and a real adaptive sweep against the full grid."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine.analysis import eta_max
from storage.recorder import Recorder
from storage.registry import Registry
from storage.settings import load_settings
from tasks import api
from tasks.adaptive import plan_gamma
from tasks.spec import SweepSpec

ETAS = [10.0**k for k in range(-3, 3)]  # 1e-3 ... 1e2


def test_plan_gamma_walks_down_then_runs_the_range_below() -> None:
    todo, found = plan_gamma(ETAS, {}, below_max_decades=2, per_round=2)
    assert todo == [100.0, 10.0] and found is None
    todo, found = plan_gamma(ETAS, {100.0: True, 10.0: True}, 2, per_round=2)
    assert todo == [1.0, 0.1] and found is None
    todo, found = plan_gamma(ETAS, {100.0: True, 10.0: True, 1.0: True, 0.1: False}, 2, per_round=2)
    assert found == 0.1 and todo == [0.01, 0.001]
    assert plan_gamma(ETAS, {100.0: True, 10.0: True, 1.0: True, 0.1: False, 0.01: False, 0.001: False}, 2) == (
        [], 0.1)
    # the top of the grid already stable: η_max is the top, run below_max_decades below it
    assert plan_gamma(ETAS, {100.0: False}, 1, per_round=2) == ([10.0], 100.0)
    # every η diverged: nothing left, no η_max
    assert plan_gamma(ETAS, dict.fromkeys(ETAS, True), 1) == ([], None)


def _spec(adaptive: bool) -> SweepSpec:
    return SweepSpec.from_dict({
        "name": "adaptive-test", "model": {"width": 16, "depth": 3},
        "data": {"dataset": "teacher", "input_dim": 8, "n_classes": 2},
        "train": {"steps": 40, "batch_size": 16, "eval_points": 2, "metrics": ["test"]},
        "grid": {"gamma": [0.1, 1.0], "eta": {"from": 1e-3, "to": 1e3, "per_decade": 1}, "seeds": [0],
                 "adaptive": adaptive, "below_max_decades": 1},
    })


def _run(data: Path, adaptive: bool) -> tuple[dict[float, float | None], int]:
    settings = load_settings(data_dir=data, workers=1, heartbeat_s=1, lost_after_s=10)
    settings.ensure_dirs()
    with Recorder(settings).start():
        sweep_id = api.submit(_spec(adaptive), settings, executor="local")
        deadline = time.time() + 400
        while not api.is_settled(settings, sweep_id) and time.time() < deadline:
            time.sleep(0.3)
        assert api.is_settled(settings, sweep_id)
    with Registry(settings.registry_url) as reg:
        runs = reg.list_runs(sweep_id)
    assert {r["status"] for r in runs} <= {"done", "diverged"}
    found = {}
    for g in (0.1, 1.0):
        cells = sorted((r["eta"], r["status"] == "diverged") for r in runs if r["gamma"] == g)
        found[g] = eta_max([e for e, _ in cells], [d for _, d in cells])
    return found, len(runs)


@pytest.mark.slow
def test_adaptive_runs_fewer_cells_and_finds_the_same_eta_max(tmp_path: Path) -> None:
    full, n_full = _run(tmp_path / "full", adaptive=False)
    adaptive, n_adaptive = _run(tmp_path / "adaptive", adaptive=True)
    assert n_full == 2 * 7
    assert n_adaptive < n_full
    assert all(v is not None for v in full.values())
    assert adaptive == full
