"""`gamma-lab reproduce NAME --scale paper --plan` (issue 11): what a preset will cost, printed without
queuing anything, for every preset; the time from the data folder's measured throughput, or said to
be unmeasured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from storage.registry import Registry
from storage.settings import load_settings
from tasks.planner import record_throughput
from tasks.reproduce import presets

ROOT = Path(__file__).resolve().parents[2]


def _plan(data: Path, name: str, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GAMMA_LAB_DATA": str(data)}
    env.pop("GAMMA_LAB_BROKER_URL", None)
    return subprocess.run([sys.executable, "-m", "app.cli", "reproduce", name, "--scale", "paper", *flags], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.slow
def test_every_presets_paper_plan_prints_and_queues_nothing(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    settings.ensure_dirs()
    with Registry(settings.registry_url) as reg:  # an existing registry, to see that nothing lands in it
        assert reg.list_sweeps(archived=None) == []
    for preset in presets().values():
        done = _plan(tmp_path, preset.name, "--plan")
        assert done.returncode == 0, done.stderr[-2000:]
        lines = done.stdout.strip().splitlines()
        assert lines[0] == f"{preset.name} (paper): plan only, nothing queued"
        specs = preset.specs("paper")
        for spec in specs:  # one line per sweep, with its size
            line = next(x for x in lines if x.startswith(f"{spec['name']}: "))
            assert f"{spec['train']['steps']} steps of batch {spec['train']['batch_size']}" in line
            assert f"× {len(spec['grid']['seeds'])} seed" in line and "cells" in line and "member-steps" in line
        if specs:
            assert any(x.startswith("total: ") and "member-steps" in x for x in lines), lines
            assert "unmeasured" in lines[-1]  # a fresh folder has no measured throughput: no guessed time
        else:
            assert "no sweeps" in done.stdout
    with Registry(settings.registry_url) as reg:
        assert reg.list_sweeps(archived=None) == []
    assert not (tmp_path / "reports").exists()


def test_plan_totals_are_the_cells_times_the_steps(tmp_path: Path) -> None:
    from tasks.reproduce import get_preset
    from tasks.reproduce_plan import preset_plan
    from tasks.spec import SweepSpec

    plan = preset_plan(get_preset("rich-scaling"), "paper", load_settings(data_dir=tmp_path))
    specs = [SweepSpec.from_dict(s) for s in get_preset("rich-scaling").specs("paper")]
    assert [s.cells for s in plan.sweeps] == [s.grid.n_cells for s in specs]
    assert plan.member_steps == sum(s.grid.n_cells * s.train.steps for s in specs)
    assert plan.rate is None and plan.seconds is None


def test_plan_estimates_the_time_from_the_measured_throughput(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    settings.ensure_dirs()
    record_throughput(tmp_path, "cpu", 1e12, 10.0)  # what a worker of this folder measured: 1e11 FLOP/s
    done = _plan(tmp_path, "collapse", "--dry-run")
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("estimated time on this machine (cpu): about ") and "measured" in last, last
    assert "unmeasured" not in done.stdout


def test_plan_adds_the_gpu_time_when_a_gpu_worker_measured_one(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    settings.ensure_dirs()
    done = _plan(tmp_path, "catapult", "--plan")
    assert done.returncode == 0 and "GPU workers" not in done.stdout, done.stderr[-2000:]
    record_throughput(tmp_path, "cuda", 1e15, 10.0)  # a GPU worker of this folder: 1e14 FLOP/s
    done = _plan(tmp_path, "catapult", "--plan")
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("estimated time on GPU workers (cuda): about ") and "1e+14 FLOP/s" in last, last
    assert "unmeasured" in done.stdout  # the CPU line still says this machine has measured nothing
