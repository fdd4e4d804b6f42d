"""The Runs page's read-only spec: the TOML it shows reads back as the same spec (#10, W&B extras)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from app.logic.presets import DEMO, LAZY_TO_RICH
from app.logic.spec_toml import spec_to_toml
from tasks.spec import SweepSpec

EXAMPLES = sorted((Path(__file__).parents[2] / "app" / "examples").glob("*.toml"))


@pytest.mark.parametrize("spec", [DEMO, LAZY_TO_RICH], ids=["demo", "lazy-to-rich"])
def test_presets_round_trip(spec: dict) -> None:
    stored = SweepSpec.from_dict(spec).to_dict()
    text = spec_to_toml(stored)
    assert tomllib.loads(text) == {k: v for k, v in stored.items() if v is not None}
    assert SweepSpec.from_toml(text).to_dict() == stored


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_files_round_trip(path: Path) -> None:
    stored = SweepSpec.from_toml(path.read_text()).to_dict()
    assert SweepSpec.from_toml(spec_to_toml(stored)).to_dict() == stored


def test_awkward_values() -> None:
    spec = {"name": 'quote " and \\ and ü', "train": {"x": float("inf"), "flag": True, "axes": {"from": 0.1}}}
    back = tomllib.loads(spec_to_toml(spec))
    assert back == spec
    with pytest.raises(TypeError, match="spec: cannot write"):
        spec_to_toml({"bad": object()})
