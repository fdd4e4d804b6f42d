"""The query side's SQL against a direct pandas computation over the raw points (hypothesis draws the
series): the heatmap's final, best and tail statistics (the ingest-time summaries and the tail's
window) and the M4 downsampling of trajectories. A shortcut in DuckDB must give what the definition
gives, as neural-tangents tests its fast paths against direct computations.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from storage import queries
from storage.bus import open_publisher
from storage.recorder import Recorder
from storage.registry import Registry
from storage.settings import Settings, load_settings
from tests.storage.conftest import _make_configs

# one run's series: distinct increasing steps (gaps as eval metrics have) with finite values
_series = st.lists(
    st.tuples(st.integers(1, 40), st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)),
    min_size=1, max_size=60,
).map(lambda pairs: (np.cumsum([gap for gap, _ in pairs]) - 1, np.array([v for _, v in pairs])))


def _recorded(folder: Path, series: list[tuple[np.ndarray, np.ndarray]]) -> tuple[Settings, str, pd.DataFrame]:
    """A sweep of 2 γ × 1 η × 2 seeds, every run done with its drawn train_loss series, ingested;
    and the raw points as a frame (run_id, gamma, eta, step, value)."""
    settings = load_settings(data_dir=folder / "data", heartbeat_s=1.0, lost_after_s=3.0, workers=1)
    settings.ensure_dirs()
    configs = _make_configs(gammas=(0.1, 1.0), etas=(0.5,), seeds=(0, 1))
    with Registry(settings.registry_url) as reg:
        sweep_id = reg.create_sweep("pandas", "t", {})
        reg.add_runs(sweep_id, configs)
    pub = open_publisher(settings)
    rows = []
    for c, (steps, values) in zip(configs, series, strict=True):
        pub.started(c.run_id, 0, "w")
        pub.points(c.run_id, 0, steps.tolist(), ["train_loss"] * len(steps), values.tolist())
        pub.finished(c.run_id, 0, "done", steps_done=int(steps[-1]) + 1)
        rows.append(pd.DataFrame({"run_id": c.run_id, "gamma": c.gamma, "eta": c.eta, "step": steps, "value": values}))
    return settings, sweep_id, pd.concat(rows, ignore_index=True)


def _per_run(points: pd.DataFrame, stat: str) -> pd.Series:
    """The per-seed statistic by its definition (storage.queries.heatmap's docstring)."""
    out = {}
    for run_id, run in points.sort_values("step").groupby("run_id"):
        if stat == "final":
            out[run_id] = run["value"].iloc[-1]
        elif stat == "best":
            out[run_id] = run["value"].min()
        else:  # tail: the last 10 % of the logged steps, at least the last one
            last = int(run["step"].max())
            window = max(1, math.ceil(queries.TAIL_FRACTION * (last + 1) - 1e-9))
            out[run_id] = run.loc[run["step"] >= last + 1 - window, "value"].mean()
    return pd.Series(out)


@pytest.mark.slow
@hyp_settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_series, min_size=4, max_size=4), st.sampled_from(["final", "best", "tail"]),
       st.sampled_from(["mean", "min"]))
def test_heatmap_statistics_equal_pandas_over_the_raw_points(series, stat: str, agg: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        settings, sweep_id, points = _recorded(Path(folder), series)
        with Recorder(settings) as rec:
            rec.drain()
            got = queries.heatmap(settings, sweep_id, stat=stat, agg=agg).set_index(["gamma", "eta"])
    per_run = _per_run(points, stat)
    cells = points.drop_duplicates("run_id").set_index("run_id")[["gamma", "eta"]]
    want = per_run.groupby([cells.loc[per_run.index, "gamma"], cells.loc[per_run.index, "eta"]]).agg(agg)
    assert (got["cell_status"] == "ok").all() and (got["n_done"] == 2).all()
    for cell, value in want.items():
        assert got.loc[cell, "value"] == pytest.approx(value, rel=1e-9, abs=1e-9), (cell, stat, agg)


@pytest.mark.slow
@hyp_settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_series, min_size=4, max_size=4), st.sampled_from([4, 8, 12, 500]), st.booleans())
def test_m4_downsampling_keeps_what_pandas_says_it_must(series, max_points: int, log_x: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        settings, _, points = _recorded(Path(folder), series)
        with Recorder(settings) as rec:
            rec.drain()
            got = queries.trajectories(settings, list(points["run_id"].unique()), max_points=max_points, log_x=log_x)
    for run_id, raw in points.groupby("run_id"):
        rows = got[got["run_id"] == run_id]
        raw_pairs = set(zip(raw["step"].tolist(), raw["value"].tolist(), strict=True))
        pairs = set(zip(rows["step"].tolist(), rows["value"].tolist(), strict=True))
        assert pairs <= raw_pairs  # only logged points, each at its own step
        assert rows["step"].is_monotonic_increasing and rows["step"].is_unique
        first, last = raw.loc[raw["step"].idxmin()], raw.loc[raw["step"].idxmax()]
        assert (first["step"], first["value"]) in pairs and (last["step"], last["value"]) in pairs
        assert raw["value"].min() in set(rows["value"]) and raw["value"].max() in set(rows["value"])
        if len(raw) <= max_points:  # nothing to squeeze: every point, as logged
            assert pairs == raw_pairs and (rows["kind"] == "point").all()
        else:
            assert len(rows) <= max_points
