"""The heatmap's `tail` statistic (issue 11): the mean over the last 10 % of a run's logged steps, the
same window as the trainer's tail_train_loss (engine.analysis.tail_steps), the portrait's default."""

from __future__ import annotations

import numpy as np
import pytest

from engine.analysis import TAIL_FRACTION, tail_mean
from storage import queries
from storage.bus import open_publisher
from storage.recorder import Recorder
from storage.registry import Registry
from storage.settings import Settings
from tests.storage.test_storage_queries import _fill


def test_tail_is_the_mean_of_the_last_tenth(settings: Settings, make_configs) -> None:
    assert queries.TAIL_FRACTION == TAIL_FRACTION
    sid, _ = _fill(settings, make_configs)
    with Recorder(settings) as rec:
        rec.drain()
        hm = queries.heatmap(settings, sid, stat="tail").set_index(["gamma", "eta"])
    curve = np.exp(-np.arange(1000) / 200.0)
    tail = tail_mean(curve)  # steps 900 … 999
    assert tail == pytest.approx(curve[900:].mean())
    assert hm.loc[(0.1, 0.1), "value"] == pytest.approx(1.5 * tail)  # seeds 1x and 2x, averaged
    assert hm.loc[(0.1, 0.1), "value"] > 1.5 * curve[-1]  # not the last point
    assert hm.loc[(1.0, 0.1), "cell_status"] == "diverged"  # a diverged tail is no value
    assert hm.loc[(1.0, 1.0), "live_value"] == 1.0  # a running run's provisional tail


def test_tail_window_of_an_odd_length_matches_the_trainer(settings: Settings, make_configs) -> None:
    configs = make_configs()[:1]
    with Registry(settings.registry_url) as reg:
        sid = reg.create_sweep("odd", "t", {})
        reg.add_runs(sid, configs)
    pub = open_publisher(settings)
    values = np.linspace(1.0, 0.1, 30)  # 30 steps: the tail is the last 3 (0.1 · 30 = 3.0000000000000004)
    pub.started(configs[0].run_id, 0, "w")
    pub.points(configs[0].run_id, 0, np.arange(30), ["train_loss"] * 30, values)
    pub.finished(configs[0].run_id, 0, "done", steps_done=30, diverged_step=None)
    with Recorder(settings) as rec:
        rec.drain()
        hm = queries.heatmap(settings, sid, stat="tail")
    assert hm["value"].iloc[0] == pytest.approx(tail_mean(values)) == pytest.approx(values[-3:].mean())
