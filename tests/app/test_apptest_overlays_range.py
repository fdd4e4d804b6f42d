"""Overlays (issue 11): the γ range (the rich side by default), smoothing, and beside each collapse
score the τ range it compares, its curve count and whether the loss drops in that range.

A sweep of four γ at one η is recorded through the real bus and recorder: the three rich-side curves
are exact rescalings in τ = η·t/γ; the lazy γ = 0.1 curve decays on its own clock and spoils it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from engine.config import ModelConfig, RunConfig, TrainConfig
from storage.bus import open_publisher
from storage.recorder import Recorder
from storage.registry import Registry
from storage.settings import load_settings

MAIN = str(Path(__file__).resolve().parents[2] / "app" / "main.py")
GAMMAS = (0.1, 10.0, 30.0, 100.0)
STEPS = 400


def _sweep(data: Path) -> str:
    settings = load_settings(data_dir=data)
    settings.ensure_dirs()
    train = TrainConfig(steps=STEPS, eval_points=0, metrics=())
    configs = [RunConfig(model=ModelConfig(width=8, depth=3), train=train, gamma=g, eta=1.0) for g in GAMMAS]
    with Registry(settings.registry_url) as reg:
        sweep_id = reg.create_sweep("overlay-range", "t", {"model": {"depth": 3}, "train": {"steps": STEPS}})
        reg.add_runs(sweep_id, configs)
    pub = open_publisher(settings)
    t = np.arange(STEPS, dtype=float)
    for c in configs:
        tau = c.eta * t / c.gamma  # the page plots against step t: an exact rescaling in η·t/γ
        loss = np.exp(-(t + 1) / 5.0) + 1e-3 if c.gamma < 1 else 0.5 / (1.0 + (5 * tau) ** 4) + 1e-3
        pub.started(c.run_id, 0, "w")
        pub.points(c.run_id, 0, t.astype(int), ["train_loss"] * STEPS, loss)
        pub.finished(c.run_id, 0, "done", steps_done=STEPS, summary={"final_train_loss": float(loss[-1])})
    with Recorder(settings) as rec:
        rec.drain()
    return sweep_id


def _table(at: AppTest):
    (table,) = [d.value for d in at.dataframe]
    return table.set_index("time variable")


def test_rich_side_by_default_with_the_shared_range_beside_each_score(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    _sweep(data)
    monkeypatch.delenv("GAMMA_LAB_BROKER_URL", raising=False)
    monkeypatch.setenv("GAMMA_LAB_DATA", str(data))
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.run()
    at.switch_page("views/overlays.py").run()
    assert not at.exception, at.exception
    assert at.select_slider(key="overlay.grange").value == (10.0, 100.0)  # the rich side
    assert any("1 runs outside the γ range" in c.value for c in at.caption)
    table = _table(at)
    assert table.loc["η·t/γ", "best"] and table.loc["η·t/γ", "collapse score (lower = tighter)"] < 0.03
    assert "3 curves" in table.loc["η·t/γ", "shared range"]
    assert "holds the drop" in table.loc["η·t/γ", "shared range"]
    assert at.query_params["gmin"] == "10.0" and at.query_params["gmax"] == "100.0"

    # a link with the whole range (AppTest sets a range slider to one value, so the URL carries it)
    page = AppTest.from_file(str(Path(MAIN).parent / "views" / "overlays.py"), default_timeout=60)
    page.query_params.update({"gmin": "0.1", "gmax": "100.0", "smooth": "20"})
    page.run()
    assert not page.exception, page.exception
    assert page.select_slider(key="overlay.grange").value == (0.1, 100.0)
    assert page.number_input(key="overlay.smooth").value == 20
    table = _table(page)
    assert "4 curves" in table.loc["t", "shared range"]
    # the lazy curve shares no τ range with the rich ones under η·t/γ: no score, and the table says why
    assert table.loc["η·t/γ", "note"].startswith("no common range"), table
