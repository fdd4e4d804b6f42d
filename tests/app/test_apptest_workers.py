"""The Workers page through AppTest: each worker with its runs, and a broker that is down said once."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from engine.config import ModelConfig, RunConfig
from storage.registry import Registry
from storage.settings import load_settings
from tests.faults.conftest import RedisProc

MAIN = str(Path(__file__).resolve().parents[2] / "app" / "main.py")


def _page(monkeypatch: pytest.MonkeyPatch, data: Path) -> AppTest:
    monkeypatch.setenv("GAMMA_LAB_DATA", str(data))
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.run()
    at.switch_page("views/workers.py").run()
    assert not at.exception, at.exception
    return at


def test_the_page_lists_a_process_that_holds_running_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GAMMA_LAB_BROKER_URL", raising=False)
    settings = load_settings(data_dir=tmp_path / "data")
    settings.ensure_dirs()
    configs = [RunConfig(model=ModelConfig(width=8, depth=3), gamma=g, eta=0.1, seed=0) for g in (0.5, 2.0)]
    with Registry(settings.registry_url) as reg:
        sweep_id = reg.create_sweep("held", "t", {"train": {"steps": 100}})
        reg.add_runs(sweep_id, configs)
        reg.mark_running(configs[0].run_id, 0, "gpu-box:4242", now=time.time() - 30)
    at = _page(monkeypatch, settings.data_dir)
    (frame,) = [d.value for d in at.dataframe]
    assert isinstance(frame, pd.DataFrame) and len(frame) == 1
    row = frame.iloc[0]
    assert (row["worker"], row["host"], row["pid"]) == ("gpu-box:4242", "gpu-box", 4242)
    assert row["state"] == "not registered, running 1 run(s)" and row["heartbeat (s ago)"] >= 30
    assert row["runs"].startswith(f"{configs[0].run_id} (sweep {sweep_id}) γ=0.5")
    assert configs[1].run_id not in row["runs"]  # queued, not trained by anyone


def test_a_broker_that_goes_down_is_a_warning_not_a_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    redis = RedisProc(tmp_path / "redis", appendonly=False)
    redis.start()
    try:
        monkeypatch.setenv("GAMMA_LAB_BROKER_URL", redis.url)
        monkeypatch.setenv("GAMMA_LAB_DATA", str(tmp_path / "data"))
        # the page alone: in lab mode app/main.py asks for a login first (app/auth.py)
        at = AppTest.from_file(str(Path(MAIN).parent / "views" / "workers.py"), default_timeout=60)
        at.run()
        assert not at.exception and not at.warning, (at.exception, at.warning)
        assert any("No worker is running" in i.value for i in at.info)
    finally:
        redis.kill()
    at.run()
    assert not at.exception, at.exception
    assert any("Cannot reach the broker at redis://127.0.0.1:" in w.value for w in at.warning), at.warning
