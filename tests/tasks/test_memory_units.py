"""Units sized by memory (issue #13 item 3), on CPU with a small memory budget.

- the planner caps units so that each unit's estimate fits `device_memory`, and says so;
- a unit planned for more memory than its worker has (a real local worker process whose
  GAMMA_LAB_DEVICE_MEMORY is smaller than the submitter's) is split in halves, then halves again,
  and every run ends done with every point stored once; the runs say "split after out of memory";
- one member that does not fit alone is planned alone (the sweep says memory limited its units) and
  ends failed, naming the estimate, the budget and the setting;
- the device running out of memory mid-run: the halves train again without a point sent twice.

The worker's check is the real one: it refuses a unit whose estimate exceeds its budget before
allocating anything, through the same path as the device's own out-of-memory error.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.memory import unit_bytes
from storage.settings import load_settings
from tasks.planner import memory_budget, plan
from tasks.spec import SweepSpec
from tests.faults.conftest import base_env, cli, kill_local_workers, registry_runs, stop, store_counts, wait_for

STEPS = 30
EVALS = 2  # steps 0 and STEPS - 1: movement_l1..l3 at each


def spec_text(name: str, width: int, *, gammas: int = 2, etas: int = 2, seeds: int = 2) -> str:
    g = ", ".join(str(10.0**i) for i in range(gammas))
    e = ", ".join(str(0.01 * 2**i) for i in range(etas))
    s = ", ".join(str(i) for i in range(seeds))
    return f"""
name = "{name}"
[model]
width = {width}
depth = 3
[data]
dataset = "teacher"
input_dim = 8
n_classes = 10
[train]
steps = {STEPS}
batch_size = 256
eval_points = {EVALS}
metrics = ["movement"]
[grid]
gamma = [{g}]
eta = [{e}]
seeds = [{s}]
"""


def cells(text: str) -> list:
    return SweepSpec.from_toml(text).cells()


def test_device_memory_reads_sizes_and_refuses_nonsense(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from storage.settings import SettingsError

    assert load_settings(data_dir=tmp_path).device_memory is None  # unset: measured where needed
    assert load_settings(data_dir=tmp_path, device_memory="2GiB").device_memory == 2 * 2**30
    monkeypatch.setenv("GAMMA_LAB_DEVICE_MEMORY", "512 MiB")
    monkeypatch.setenv("GAMMA_LAB_MEMORY_FRACTION", "0.5")
    got = load_settings(data_dir=tmp_path)
    assert got.device_memory == 512 * 2**20 and got.memory_fraction == 0.5
    for bad, field in (("lots", "device_memory"), ("10", "device_memory"), ("2 parsecs", "device_memory")):
        with pytest.raises(SettingsError, match=field):
            load_settings(data_dir=tmp_path, device_memory=bad)
    with pytest.raises(SettingsError, match="memory_fraction"):
        load_settings(data_dir=tmp_path, memory_fraction=1.5)


def test_the_planner_caps_units_by_the_estimate_and_says_so(tmp_path: Path) -> None:
    spec = SweepSpec.from_toml(spec_text("cap", 256, gammas=2, etas=4, seeds=2))
    roomy = load_settings(data_dir=tmp_path, workers=1, device_memory="1GiB")
    one = plan(spec, roomy)
    assert one.n_units == 1 and one.memory_note == ""

    budget = unit_bytes(spec.cells()[:4]) + 1  # four members (two seeds) fit, not more
    small = load_settings(data_dir=tmp_path, workers=1, device_memory=budget)
    assert memory_budget(small)[0] == budget and "device_memory" in memory_budget(small)[1]
    capped = plan(spec, small)
    assert capped.n_cells == 16 and capped.n_units == 4
    assert all(unit_bytes(u.configs) <= budget for u in capped.units)
    assert "memory limited the unit size" in capped.memory_note and "at most 4 member(s)" in capped.memory_note

    # unset: measured, a share of this machine's RAM for each local worker
    measured, source = memory_budget(load_settings(data_dir=tmp_path, workers=2))
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert measured == int(ram * 0.7 / 2) and "RAM" in source


@pytest.mark.slow
def test_a_unit_too_big_for_its_worker_is_split_and_every_run_ends_done(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    fits_text, alone_text = spec_text("split", 256), spec_text("alone", 1024, gammas=1, seeds=1)
    grid, alone = cells(fits_text), cells(alone_text)
    # the worker's budget: two members of the first sweep fit, four do not, one of the second does not
    budget = unit_bytes(grid[:2]) + 1
    assert unit_bytes(grid[:4]) > budget and unit_bytes(alone[:1]) > budget
    worker_env = base_env(data, GAMMA_LAB_DEVICE_MEMORY=str(budget), GAMMA_LAB_WARM_WORKERS="300")
    log = open(tmp_path / "worker.log", "ab")  # noqa: SIM115 - closed below
    worker = subprocess.Popen([sys.executable, "-m", "tasks.local_worker"], env=worker_env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: list((data / "queue" / "workers").glob("*")) if (data / "queue").is_dir() else [],
                 120, "the small worker to register")
        # the first sweep submitted where 1 GiB is the budget: planned as one unit of 8; the second
        # with the worker's budget: planned one member a unit, and the sweep says memory limited them
        said = {}
        for name, text, submitted in (("split", fits_text, "1GiB"), ("alone", alone_text, str(budget))):
            path = tmp_path / f"{name}.toml"
            path.write_text(text)
            done = cli(base_env(data, GAMMA_LAB_DEVICE_MEMORY=submitted), "sweep", str(path), "--wait", timeout=600)
            assert "Traceback" not in done.stderr, done.stderr[-3000:]
            said[name] = (done.stdout.strip().splitlines()[-1], done.stderr)
        runs = {r["run_id"]: r for r in registry_runs(data)}
    finally:
        stop(worker)
        log.close()
        kill_local_workers(data)
    worker_log = (tmp_path / "worker.log").read_text()

    split = [runs[c.run_id] for c in grid]
    assert [r["status"] for r in split] == ["done"] * 8, [(r["status"], r["error"]) for r in split]
    for r in split:  # the Runs page's error column: both splits each run went through
        assert r["error"] == "split after out of memory: 8 → 4 + 4; split after out of memory: 4 → 2 + 2"
        assert r["attempt"] == 0 and r["steps_done"] == STEPS
    # the worker's log: 8 → 4 + 4, then each 4 → 2 + 2
    assert worker_log.count("split after out of memory: 8 → 4 + 4") == 1
    assert worker_log.count("split after out of memory: 4 → 2 + 2") == 2
    assert worker_log.count("split after out of memory") == 3

    counts = store_counts(data / "metrics.duckdb")
    expected = STEPS + 3 * EVALS  # train_loss every step, movement_l1..l3 at the eval steps
    assert {counts.per_run.get((c.run_id, 0)) for c in grid} == {expected}
    assert counts.duplicates == 0

    # the Runs page's table (storage.dashboard_reads.runs_table) shows the note in its error column
    from storage.dashboard_reads import runs_table
    from storage.registry import Registry

    with Registry(f"sqlite:///{data / 'registry.sqlite'}") as reg:
        table = runs_table(reg, said["split"][0])
    assert set(table["error"]) == {split[0]["error"]}

    assert "memory limited the unit size: 2 cells of width 1024 in units of at most 1 member(s)" in said["alone"][1]
    assert "memory limited" not in said["split"][1]
    for c in alone:  # one member that does not fit: failed, with what to do
        r = runs[c.run_id]
        assert r["status"] == "failed"
        assert r["error"].startswith("out of memory with one member (the estimate is above the budget)")
        assert "GAMMA_LAB_DEVICE_MEMORY" in r["error"] and "estimate" in r["error"]
        assert f"budget is {budget / 2**20:.3g} MiB" in r["error"]


def test_out_of_memory_mid_run_retries_the_halves_without_sending_a_point_twice(tmp_path: Path) -> None:
    """The device runs out of memory after the unit sent points (a real failed allocation of torch's
    CPU allocator, made from inside the training loop): the halves train again from step 0 under the
    same attempt and send only the points batches not sent before, so each run's seq runs 0, 1, ...
    without a repeat and every step's train_loss arrives once."""
    import torch

    from storage.bus import validate_event
    from tasks.planner import pack
    from tasks.worker import run_unit

    spec = SweepSpec.from_toml(spec_text("mid", 16, gammas=2, etas=2, seeds=1))
    unit = pack(spec.cells()).units[0]
    assert len(unit.configs) == 4
    events: list[dict] = []
    tries = {"points": 0}

    class Publisher:
        def publish(self, event: dict) -> None:
            validate_event(dict(event))
            if event["type"] == "points":
                tries["points"] += 1
                if tries["points"] == 9:  # after two flushes of the four-member try, before its third
                    torch.empty(2**50, dtype=torch.uint8)  # RuntimeError: DefaultCPUAllocator: can't allocate
            events.append(event)

    settings = load_settings(data_dir=tmp_path, device_memory="1GiB")
    out = run_unit(unit.to_json(), settings, Publisher(), flush_every=5)
    assert [e["status"] for e in out] == ["done"] * 4
    assert {e["error"] for e in out} == {"split after out of memory: 4 → 2 + 2"}
    for rid in unit.run_ids:
        points = [e for e in events if e["type"] == "points" and e["run_id"] == rid]
        assert [e["seq"] for e in points] == list(range(len(points)))
        steps = [s for e in points for s, m in zip(e["step"], e["metric"], strict=True) if m == "train_loss"]
        assert sorted(steps) == list(range(STEPS))
        assert {e["attempt"] for e in points} == {unit.attempts[0]}  # no new attempt
        finished = [e for e in events if e["type"] == "finished" and e["run_id"] == rid]
        assert len(finished) == 1 and finished[0]["batches"] == len(points)
    assert tries["points"] > 9  # it did run out of memory mid-run, after points were sent


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA device (bench/device_check.sh runs it where one is lent)")
def test_a_real_cuda_out_of_memory_splits_the_unit(tmp_path: Path) -> None:
    """On a GPU the device itself runs out: torch's allocator is held to a little more than four
    members' estimate (set_per_process_memory_fraction) while the budget lets the unit of 16 start,
    so torch.OutOfMemoryError splits it; every run ends without failing and each says so."""
    import torch

    from tasks.planner import pack
    from tasks.worker import run_unit

    spec = SweepSpec.from_toml(spec_text("cuda", 2048, gammas=4, etas=4, seeds=1))
    unit = pack(spec.cells(), device="cuda", memory_budget=2**40).units[0]
    assert len(unit.configs) == 16
    limit = 1.2 * unit_bytes(unit.configs[:4])
    events: list[dict] = []

    class Publisher:
        def publish(self, event: dict) -> None:
            events.append(event)

    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(limit / torch.cuda.get_device_properties(0).total_memory)
    try:
        settings = load_settings(data_dir=tmp_path, device_memory="1TiB")  # the estimate's check lets it start
        out = run_unit(unit.to_json(), settings, Publisher(), device="cuda")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert {e["status"] for e in out} <= {"done", "diverged"}, [e["error"] for e in out]
    assert all(e["error"].startswith("split after out of memory: 16 → 8 + 8") for e in out)
    for rid in unit.run_ids:
        seqs = [e["seq"] for e in events if e["type"] == "points" and e["run_id"] == rid]
        assert seqs == list(range(len(seqs)))


def test_the_launch_page_says_when_memory_limited_the_units(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("GAMMA_LAB_DATA", str(tmp_path))
    monkeypatch.setenv("GAMMA_LAB_AUTH", "none")
    monkeypatch.setenv("GAMMA_LAB_DEVICE_MEMORY", "1MiB")
    at = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "app" / "main.py"), default_timeout=60)
    at.run()
    next(b for b in at.button if b.label == "Check plan").click().run()
    assert not at.exception, at.exception
    said = [c.value for c in at.caption if c.value.startswith("Memory limited the unit size")]
    assert len(said) == 1 and "against a memory budget of 1 MiB" in said[0], [c.value for c in at.caption]
