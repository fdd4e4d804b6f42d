"""`gamma-lab demo`: its own name when it trains another config, and a second demo says that it reused
the first one's cells instead of pretending to train (#10 item 12)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.logic.presets import DEMO
from tasks.spec import SweepSpec
from tests.tasks.test_cli_local import _cli


@pytest.mark.slow
def test_demo_names_its_config_and_says_when_it_reuses(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = _cli(data, "demo", "--steps", "20")
    assert first.returncode == 0, first.stderr
    assert "(demo-mlp-mnist1d-20steps): 15 cells queued" in first.stderr, first.stderr
    again = _cli(data, "demo", "--steps", "20")
    assert again.returncode == 0, again.stderr
    assert "15 cells: 0 queued, 15 reused from earlier sweeps" in again.stderr, again.stderr


def test_the_launch_preset_and_demo_toml_have_different_names() -> None:
    demo_toml = SweepSpec.from_toml((Path(__file__).parents[2] / "app/examples/demo.toml").read_text())
    assert demo_toml.name != DEMO["name"]
    assert SweepSpec.from_dict(DEMO).to_dict() != demo_toml.to_dict()
