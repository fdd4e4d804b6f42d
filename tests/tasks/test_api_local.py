"""tasks.api in embedded mode (local worker processes, spool bus, recorder in this process)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine.config import ConfigError
from storage.recorder import Recorder
from storage.registry import Registry
from storage.settings import load_settings
from tasks import api
from tasks.spec import SweepSpec


def _wait(settings: object, sweep_id: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not api.is_settled(settings, sweep_id):
        assert time.time() < deadline, "sweep did not settle"
        time.sleep(0.3)


@pytest.mark.slow
def test_add_seeds_and_cancel_local(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, workers=1, heartbeat_s=1, lost_after_s=10)
    spec = SweepSpec.from_dict({
        "model": {"width": 8, "depth": 2}, "data": {"dataset": "teacher", "input_dim": 4, "n_classes": 2},
        "train": {"steps": 30, "batch_size": 8, "eval_points": 2, "metrics": ["test"]},
        "grid": {"gamma": [1.0], "eta": [0.01, 0.1], "seeds": [0]},
    })
    with Recorder(settings).start():
        sweep_id = api.submit(spec, settings)
        _wait(settings, sweep_id)
        assert api.sweep_progress(settings, sweep_id)["done"] == 2
        queued = api.add_seeds(settings, sweep_id, [1, 2])
        assert len(queued) == 4
        _wait(settings, sweep_id)
        assert api.sweep_progress(settings, sweep_id)["done"] == 6
        with pytest.raises(ConfigError):
            api.add_seeds(settings, sweep_id, [-1])

        long = SweepSpec.from_dict({**spec.to_dict(), "train": {**spec.to_dict()["train"], "steps": 500_000}})
        long_id = api.submit(long, settings)
        reg = Registry(settings.registry_url)
        deadline = time.time() + 120
        while {r["status"] for r in reg.list_runs(long_id)} != {"running"}:
            assert time.time() < deadline
            time.sleep(0.2)
        assert api.cancel(settings, long_id) == 2
        _wait(settings, long_id)
        rows = reg.list_runs(long_id)
        assert {r["status"] for r in rows} == {"cancelled"} and all(r["steps_done"] < 500_000 for r in rows)
        # rerun the cancelled sweep's runs: a new attempt, cancel flags lowered
        assert len(api.rerun(settings, long_id)) == 2
        deadline = time.time() + 120
        while {r["status"] for r in reg.list_runs(long_id)} != {"running"}:
            assert time.time() < deadline
            time.sleep(0.2)
        assert {r["attempt"] for r in reg.list_runs(long_id)} == {1}
        api.cancel(settings, long_id)
        _wait(settings, long_id)
        reg.close()
