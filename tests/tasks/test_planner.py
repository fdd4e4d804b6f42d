"""tasks.planner: units of equal shape, memory-sized, JSON round trip, time estimate."""

from __future__ import annotations

import pytest

from engine.config import ConfigError, RunConfig
from tasks.planner import WorkUnit, estimate_seconds, max_members, member_bytes, pack, parameter_count
from tasks.spec import SweepSpec


def _spec(**grid: object) -> SweepSpec:
    return SweepSpec.from_dict({
        "model": {"width": 16, "depth": 3}, "data": {"dataset": "teacher", "input_dim": 8, "n_classes": 3},
        "train": {"steps": 10, "batch_size": 8}, "grid": {"gamma": [0.001, 0.1, 1.0], "eta": [0.1, 1.0], **grid},
    })


def test_units_share_shape_key_and_cover_every_cell_once() -> None:
    cells = _spec(seeds=[0, 1]).cells()
    plan = pack(cells)
    # γ = 0.001 resolves to float64: a different shape key from the float32 cells
    assert {len({c.shape_key for c in u.configs}) for u in plan.units} == {1}
    assert len({u.configs[0].shape_key for u in plan.units}) == 2
    assert sorted(c.run_id for u in plan.units for c in u.configs) == sorted(c.run_id for c in cells)
    assert plan.n_cells == len(cells) and plan.n_units == len(plan.units)


def test_memory_budget_and_member_limit_split_units() -> None:
    cells = _spec(seeds=list(range(10))).cells()
    one = member_bytes(cells[-1])
    plan = pack(cells, memory_budget=3 * one)
    assert max(len(u.configs) for u in plan.units) <= 3
    assert max(len(u.configs) for u in pack(cells, member_limit=4).units) <= 4
    # even split: sizes differ by at most one within a shape group
    sizes = [len(u.configs) for u in pack(cells[20:], member_limit=7).units]
    assert max(sizes) - min(sizes) <= 1
    assert len(pack(cells[20:], parallelism=4).units) == 4


def test_parameter_count_mlp_exact() -> None:
    cfg = _spec().cells()[0]
    # D=8 -> 16 -> 16 -> C=3 with biases
    assert parameter_count(cfg) == 8 * 16 + 16 + 16 * 16 + 16 + 16 * 3 + 3
    assert member_bytes(cfg) > 0 and max_members(cfg, "cuda") >= max_members(cfg, "cpu")


def test_estimate_scales_with_members_and_steps() -> None:
    from tasks.planner import UNIT_OVERHEAD_S

    def compute(configs: list, device: str = "cpu") -> float:  # the FLOP part, without start-up
        return estimate_seconds(configs, device) - UNIT_OVERHEAD_S[device]

    cells = _spec().cells()[2:4]
    one = compute(cells[:1])
    assert one > 0
    assert compute(cells) == pytest.approx(2 * one)
    assert compute(cells, "cuda") < compute(cells, "cpu")
    longer = [c.replace(train=c.train.__class__(steps=100, batch_size=8)) for c in cells[:1]]
    assert compute(longer) == pytest.approx(10 * one)


def test_unit_json_round_trip_and_errors() -> None:
    plan = pack(_spec().cells(), attempts={}, sweep_id="s1", device="cuda:0")
    unit = plan.units[0]
    back = WorkUnit.from_json(unit.to_json())
    assert back == unit and back.device == "cuda:0" and back.sweep_id == "s1"
    assert all(isinstance(c, RunConfig) for c in back.configs)
    with pytest.raises(ConfigError):
        WorkUnit.from_json("{not json")
    with pytest.raises(ConfigError):
        WorkUnit.from_json('{"configs": []}')
    with pytest.raises(ConfigError):
        pack(_spec().cells(), device="tpu")


def test_wall_time_counts_start_up_and_parallel_workers() -> None:
    from tasks.planner import UNIT_OVERHEAD_S

    cells = _spec(seeds=list(range(4))).cells()
    serial = pack(cells, parallelism=1)
    parallel = pack(cells, parallelism=4)
    # every unit pays its start-up, so a tiny grid is never estimated at 0 s
    assert all(estimate_seconds(u.configs) >= UNIT_OVERHEAD_S["cpu"] for u in parallel.units)
    assert serial.wall_seconds == pytest.approx(serial.estimated_seconds)
    assert parallel.max_unit_seconds <= parallel.wall_seconds < parallel.estimated_seconds
