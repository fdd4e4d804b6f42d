"""A lab broker records into ONE data folder. A `gamma-lab sweep --wait` on a second machine (its own
data folder, the lab's broker and registry) used to start a recorder of its own, because its local
owner lock was free: the two recorders split the stream's events between two metric files, and the
lab's dashboard showed holes in every sweep launched that way."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.conftest import (
    base_env,
    cli,
    expected_points,
    registry_runs,
    small_spec,
    spawn,
    stop,
    store_counts,
    wait_for,
)

pytestmark = pytest.mark.slow

STEPS = 2000
EVAL_POINTS = 3


def test_a_sweep_waited_on_from_another_data_folder_records_into_the_labs_store(tmp_path: Path, redis_factory) -> None:
    redis = redis_factory(appendonly=False)
    server, laptop = tmp_path / "server", tmp_path / "laptop"
    server.mkdir()
    laptop.mkdir()
    shared = {"GAMMA_LAB_BROKER_URL": redis.url, "GAMMA_LAB_REGISTRY_URL": f"sqlite:///{server / 'registry.sqlite'}"}
    server_env = base_env(server, **shared)
    laptop_env = base_env(laptop, **shared)
    recorder = spawn(server_env, ["recorder"], tmp_path / "recorder.log")
    worker = spawn(server_env, ["worker", "--queue", "cpu", "--device", "cpu"], tmp_path / "worker.log")
    try:
        wait_for(lambda: " ready." in (tmp_path / "worker.log").read_text(errors="replace"), 120, "the worker")
        wait_for(lambda: "recording" in (tmp_path / "recorder.log").read_text(errors="replace"), 60, "the recorder")
        spec = laptop / "spec.toml"
        spec.write_text(small_spec("laptop", etas=(0.01, 0.03, 0.1), steps=STEPS, eval_points=EVAL_POINTS))
        res = cli(laptop_env, "sweep", str(spec), "--wait", timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        assert "Traceback" not in res.stderr
    finally:
        stop(worker)
        stop(recorder)
    runs = registry_runs(server, shared["GAMMA_LAB_REGISTRY_URL"])
    assert sorted(r["status"] for r in runs) == ["done"] * 3
    counts = store_counts(server / "metrics.duckdb")
    per_run = expected_points(STEPS, EVAL_POINTS)
    assert {rid: n for (rid, _att), n in counts.per_run.items()} == {r["run_id"]: per_run for r in runs}
    assert counts.duplicates == 0
    laptop_store = laptop / "metrics.duckdb"
    assert not laptop_store.exists() or store_counts(laptop_store).points == 0
