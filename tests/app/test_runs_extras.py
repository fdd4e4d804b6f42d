"""The Runs page's additions for users coming from W&B or Aim (#10): each run's start, end and duration;
the sweep's ETA at the pace so far; the spec as read-only TOML; why runs failed (the error their
worker sent, and the local workers' log)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from app.logic.source import eta_seconds

MAIN = str(Path(__file__).resolve().parents[2] / "app" / "main.py")
STEPS = 40


def test_eta_from_the_pace_so_far() -> None:
    now = 1_000_000.0
    runs = pd.DataFrame({
        "status": ["done", "running", "queued", "queued"],
        "steps_done": [100, 50, 0, 0],
        "started": pd.to_datetime([now - 60, now - 30, None, None], unit="s", utc=True),
    })
    # 150 of 400 steps in 60 s: 250 steps left take 100 s
    assert eta_seconds(runs, 100, now) == pytest.approx(100.0)
    assert eta_seconds(runs.assign(status="done"), 100, now) is None  # nothing left
    assert eta_seconds(runs.assign(steps_done=[1, 0, 0, 0], status=["running"] * 4), 100, now) is None  # no pace yet
    assert eta_seconds(runs, None, now) is None


@pytest.fixture
def seeded(tmp_path: Path) -> dict:
    """One local sweep of 3 runs: done, failed (with a traceback), running."""
    from engine.config import ModelConfig, RunConfig, TrainConfig
    from storage.bus import open_publisher
    from storage.recorder import Recorder
    from storage.registry import Registry
    from storage.settings import load_settings
    from tasks.spec import SweepSpec

    data = tmp_path / "data"
    settings = load_settings(data_dir=data, workers=1)
    settings.ensure_dirs()
    spec = SweepSpec.from_dict({"name": "extras", "model": {"width": 8, "depth": 2}, "train": {"steps": STEPS},
                                "grid": {"gamma": [1.0], "eta": [0.01, 0.1, 1.0]}})
    pub = open_publisher(settings)
    with Registry(settings.registry_url) as reg:
        sid = reg.create_sweep("extras", "t", spec.to_dict(), executor="local")
        configs = [RunConfig(model=ModelConfig(width=8, depth=2), train=TrainConfig(steps=STEPS), gamma=1.0, eta=e,
                             seed=0) for e in (0.01, 0.1, 1.0)]
        reg.add_runs(sid, configs)
    done, failed, running = (c.run_id for c in configs)
    for rid in (done, failed, running):
        pub.started(rid, 0, "host:1")
        pub.points(rid, 0, np.arange(10), ["train_loss"] * 10, np.linspace(1.0, 0.5, 10))
    pub.finished(done, 0, "done", steps_done=STEPS)
    pub.finished(failed, 0, "failed", error="RuntimeError: boom\nTraceback (most recent call last): ...")
    (data / "queue").mkdir(exist_ok=True)
    (data / "queue" / "workers.log").write_text("".join(f"line {i}\n" for i in range(100)))
    with Recorder(settings) as rec:
        rec.drain()
    return {"data": data, "sweep": sid, "failed": failed}


def test_runs_page_shows_timing_eta_spec_and_failures(seeded: dict, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import streamlit as st

    monkeypatch.setenv("GAMMA_LAB_DATA", str(seeded["data"]))
    st.cache_resource.clear()
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.query_params["sweep"] = seeded["sweep"]
    at.run()
    at.switch_page("views/runs.py").run()
    assert not at.exception, at.exception
    at.multiselect(key="runs.cols").set_value(["started", "ended", "duration_s"]).run()  # "More columns"
    assert not at.exception, at.exception
    table = next(d.value for d in at.dataframe if "run_id" in d.value.columns and "duration_s" in d.value.columns)
    done = table[table["status"] == "done"].iloc[0]
    assert pd.notna(done["started"]) and pd.notna(done["ended"]) and done["duration_s"] >= 0
    assert pd.isna(table[table["status"] == "running"].iloc[0]["ended"])
    codes = [c.value for c in at.code]
    assert any('name = "extras"' in c and "[grid]" in c for c in codes), codes  # the spec, as TOML
    assert any("RuntimeError: boom" in c for c in codes), codes  # the failed run's error
    assert any(c.splitlines()[-1] == "line 99" and "line 59" not in c for c in codes), codes  # the log's last 40 lines
    assert any(e.label.startswith("Failed runs (1)") for e in at.expander)
    assert any("left at the pace so far" in c.value for c in at.caption), [c.value for c in at.caption]


@pytest.mark.slow
def test_sweeps_table_fits_1280_with_runs_in_every_state(seeded: dict, tmp_path: Path) -> None:
    """A sweep with done, failed, running, cancelled and queued runs: its per-status counts were a
    column each and cut the sweeps table off at 1280 px (one `runs` column now); its runs table, with a
    traceback in the error column, was cut off too (error narrow, steps_done under More columns)."""
    from storage.registry import Registry
    from storage.settings import load_settings

    from .test_e2e_browser import CHROMIUM, CHROMIUM_ARGS, PAGE_TIMEOUT_MS, _serve

    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from engine.config import ModelConfig, RunConfig, TrainConfig

    settings = load_settings(data_dir=seeded["data"])
    with Registry(settings.registry_url) as reg:  # one more cell cancelled while queued, one queued
        extra = [RunConfig(model=ModelConfig(width=8, depth=2), train=TrainConfig(steps=STEPS), gamma=1.0, eta=e,
                           seed=0) for e in (3.0, 10.0)]
        reg.add_runs(seeded["sweep"], extra)
        reg.request_cancel(extra[0].run_id)
    with _serve(seeded["data"], tmp_path / "serve.log") as (url, _proc), sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        page.goto(f"{url}/runs?sweep={seeded['sweep']}")
        tables = page.locator('[data-testid="stDataFrame"]')
        tables.nth(1).locator(".dvn-scroller").wait_for(state="attached")
        page.wait_for_timeout(1500)
        widths = [tables.nth(i).locator(".dvn-scroller").evaluate("e => [e.scrollWidth, e.clientWidth]")
                  for i in range(2)]  # the sweeps table, then the runs table (an error column, a diverged run)
        browser.close()
    assert all(scroll <= visible + 1 for scroll, visible in widths), widths  # no column cut off on the right
