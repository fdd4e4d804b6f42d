"""Trajectories: one chart with runs of several sweeps (#10, "what a W&B user looks for first")."""

from __future__ import annotations

import pandas as pd

from app.logic.selection import picked_from

from .test_newcomer_views import _figures, _page, seeded  # noqa: F401 - the module-scoped fixture

__all__ = ["seeded"]


def test_picked_from_tags_each_run_with_its_sweep_and_lists_shared_runs_once() -> None:
    a = pd.DataFrame({"run_id": ["r1", "r2"], "gamma": [1.0, 1.0]})
    b = pd.DataFrame({"run_id": ["r2", "r3"], "gamma": [1.0, 2.0]})
    sweeps = pd.DataFrame({"sweep_id": ["A", "B"], "name": ["first", "second"]})
    out = picked_from(a, "A", {"B": b}, sweeps)
    assert out["run_id"].tolist() == ["r1", "r2", "r3"]
    assert out["source_sweep"].tolist() == ["A", "A", "B"]
    assert out["sweep_name"].tolist() == ["first", "first", "second"]
    assert picked_from(a, "A", {}, sweeps)["source_sweep"].tolist() == ["A", "A"]


def test_hand_picked_runs_from_two_sweeps_in_one_chart(seeded, monkeypatch) -> None:  # noqa: F811
    at = _page(seeded, monkeypatch, "trajectories", sweep=seeded["A"], mode="pick")
    more = at.multiselect(key="traj.more")
    assert any(seeded["B"] in o for o in more.options) and not any(seeded["A"] in o for o in more.options)
    more.select(seeded["B"]).run()
    assert not at.exception, at.exception
    runs = at.multiselect(key="traj.runs")
    assert len(runs.options) == 2 * 12, runs.options  # both sweeps' runs to pick from
    assert any(o.startswith("newcomer-B · ") for o in runs.options), runs.options
    from storage.registry import Registry
    from storage.settings import load_settings

    with Registry(load_settings(data_dir=seeded["data"]).registry_url) as reg:
        in_a = {r["run_id"] for r in reg.list_runs(seeded["A"]) if r["status"] == "done"}
        in_b = {r["run_id"] for r in reg.list_runs(seeded["B"]) if r["status"] == "done"}
    pick = [sorted(in_a)[0], sorted(in_b)[0]]
    at.multiselect(key="traj.runs").set_value(pick).run()
    assert not at.exception, at.exception
    shown = at.dataframe[-1].value  # the "Runs shown" table
    assert set(shown["run_id"]) == set(pick) and set(shown["sweep_name"]) == {"newcomer-A", "newcomer-B"}
    assert _figures(at)[0]["data"], "nothing drawn"
