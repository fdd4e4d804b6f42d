"""The Reports page through AppTest: an empty data folder says how to make a report; with reports it
lists them with their verdicts, shows the opened one's table and links each sweep to its portrait."""

from __future__ import annotations

import json
import math
from pathlib import Path

import plotly.graph_objects as go
import pytest
from streamlit.testing.v1 import AppTest

from tasks.reproduce import Measurement, Row, get_preset, write_report

MAIN = str(Path(__file__).resolve().parents[2] / "app" / "main.py")


def _page(monkeypatch: pytest.MonkeyPatch, data: Path) -> AppTest:
    monkeypatch.delenv("GAMMA_LAB_BROKER_URL", raising=False)
    monkeypatch.setenv("GAMMA_LAB_DATA", str(data))
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.run()
    at.switch_page("views/reports.py").run()
    assert not at.exception, at.exception
    return at


def test_no_report_yet_says_how_to_make_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _page(monkeypatch, tmp_path / "data")
    assert any("gamma-lab reproduce" in i.value for i in at.info)


def test_reports_are_listed_and_one_opens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    preset = get_preset("lazy-scaling")
    rows = [Row("η_max slope", 2.0, 1.9, 0.05, 0.3), Row("η* slope", 2.0, 3.0, 0.05, 0.3),
            Row("score", math.nan, 0.1, math.nan, 0.0, "info", note="τ ∈ [1, 2], 3 curves")]  # fmt: skip
    spec = preset.specs("ci")
    figure = go.Figure(go.Scatter(x=[1.0, 10.0], y=[1.0, 100.0], name="η_max"))
    write_report(data, preset, "ci", ["abcdef012345"], spec, Measurement(rows, [figure]), now=1_700_000_000.0)
    write_report(data, get_preset("deep-linear"), "ci", [], [], Measurement(rows[:1]), now=1_700_000_100.0)
    at = _page(monkeypatch, data)
    overview, table = (d.value for d in at.dataframe)
    assert list(overview["preset"]) == ["deep-linear", "lazy-scaling"]  # newest first
    assert list(overview["verdict"]) == ["pass", "fail"]
    at.selectbox(key="reports.pick").set_value(1).run()
    assert not at.exception, at.exception
    table = at.dataframe[1].value
    assert list(table["verdict"]) == ["pass", "fail", "info"]
    assert "off by 1" in table["note"].iloc[1]
    links = [(e.proto.label, e.proto.query_string) for e in at.main if type(e).__name__ == "PageLink"]
    assert links == [("Phase portrait of sweep abcdef012345", "sweep=abcdef012345")]
    assert at.get("download_button")
    (drawn,) = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]  # the figure, from report.json
    assert drawn["data"][0]["name"] == "η_max"
