"""tasks.workers.list_workers on a real SQLite registry: runs go to the worker whose process trains
them (a prefork pool's children included), and a process nobody registered is listed with its runs."""

from __future__ import annotations

from pathlib import Path

from engine.config import ModelConfig, RunConfig
from storage.registry import Registry
from storage.settings import load_settings
from tasks.workers import list_workers, workers_table

NOW = 1_000_000.0


def test_runs_are_listed_under_the_worker_whose_process_trains_them(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data")
    settings.ensure_dirs()
    configs = [RunConfig(model=ModelConfig(width=8, depth=3), gamma=g, eta=0.1, seed=0) for g in (0.5, 1.0, 2.0)]
    with Registry(settings.registry_url) as reg:
        sweep_id = reg.create_sweep("pool", "t", {"train": {"steps": 100}})
        reg.add_runs(sweep_id, configs)
        reg.mark_running(configs[0].run_id, 0, "gpu1:201", now=NOW - 4)  # a prefork child of pid 200
        reg.mark_running(configs[1].run_id, 0, "gpu2:900", now=NOW - 50)  # a process that stopped registering
    registered = [
        {"node": "gamma-lab-gpu-cuda0-200@gpu1", "host": "gpu1", "device": "cuda", "queues": ["gpu"], "pid": 200,
         "pids": [201, 202], "seen": NOW - 2},
        {"node": "gamma-lab-gpu-cuda1-300@gpu1", "host": "gpu1", "device": "cuda", "queues": ["gpu"], "pid": 300,
         "seen": NOW - 1},
    ]
    rows = list_workers(settings, registered, now=NOW)
    assert [(r.name, r.state, r.heartbeat_age_s) for r in rows] == [
        ("gamma-lab-gpu-cuda0-200@gpu1", "running 1 run(s)", 2.0),
        ("gamma-lab-gpu-cuda1-300@gpu1", "idle", 1.0),
        ("gpu2:900", "not registered, running 1 run(s)", 50.0),
    ]
    assert [r["run_id"] for r in rows[0].runs] == [configs[0].run_id] and rows[0].runs[0]["sweeps"] == [sweep_id]
    assert (rows[2].host, rows[2].pid, rows[2].device) == ("gpu2", 900, "-")
    table = workers_table(rows).splitlines()
    assert table[1].split()[:6] == ["gamma-lab-gpu-cuda0-200@gpu1", "gpu1", "cuda", "gpu", "200", "2"]
    assert table[2] == f"    {configs[0].run_id} (sweep {sweep_id}) γ=0.5 η=0.1 seed=0"


def test_no_worker_says_how_to_start_one() -> None:
    assert workers_table([]).startswith("no worker is running")


def test_a_gpu_worker_registers_the_device_it_was_given(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """`gamma-lab worker --device cuda:1` trains on "cuda" (the one GPU it sees); the listing says cuda:1."""
    from tasks.celery_app import worker_record

    monkeypatch.setenv("GAMMA_LAB_WORKER_DEVICE", "cuda")
    monkeypatch.setenv("GAMMA_LAB_WORKER_DEVICE_NAME", "cuda:1")
    assert worker_record("n", ["gpu"])["device"] == "cuda:1"
