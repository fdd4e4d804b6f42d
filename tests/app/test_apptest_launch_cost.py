"""The Launch page says what the chosen costly metrics cost (issue #13 item 5): a caption under the
plan from engine.diagnostics_cost's model, which follows the metric selection."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from app.logic.eval_cost import cost_caption
from tasks.spec import SweepSpec

MAIN = str(Path(__file__).resolve().parents[2] / "app" / "main.py")


def _caption(at: AppTest) -> str:
    found = [c.value for c in at.caption if c.value.startswith("Costly metrics")]
    assert len(found) == 1, [c.value for c in at.caption]
    return found[0]


def _check(at: AppTest, metrics: list[str]) -> None:
    at.multiselect(key="launch.train.metrics").set_value(metrics)
    next(b for b in at.button if b.label == "Check plan").click().run()
    assert not at.exception, at.exception


def test_the_cost_caption_appears_and_follows_the_metric_selection(tmp_path, monkeypatch):
    monkeypatch.setenv("GAMMA_LAB_DATA", str(tmp_path))
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    _check(at, ["test", "sharpness"])
    both = _caption(at).split(";")[0]  # the shares; the rest says what each metric is
    assert "sharpness +" in both and "test +" in both and "alignment" not in both
    _check(at, ["test"])
    only = _caption(at).split(";")[0]
    assert "test +" in only and "sharpness" not in only
    _check(at, [])
    assert not [c.value for c in at.caption if c.value.startswith("Costly metrics")]


def test_the_caption_names_the_capped_schedule():
    short = cost_caption(SweepSpec.from_dict({"train": {"steps": 200, "eval_points": 30}}))
    # 200 steps of the default MLP: the 10 that one eval per 20 steps allows would cost more than half
    # of training, so the budget keeps its minimum, 3
    assert short is not None and "at 3 eval steps (of 30 asked: at most one per 20 steps" in short
    assert "what fits in 50% of the training time, never fewer than 3" in short
    long = cost_caption(SweepSpec.from_dict({"train": {"steps": 5000, "eval_points": 30}}))
    assert long is not None and "asked" not in long
    assert cost_caption(SweepSpec.from_dict({"train": {"metrics": []}})) is None


def test_the_caption_says_which_model_priced_the_architecture():
    mlp = cost_caption(SweepSpec.from_dict({"train": {"steps": 1000}}))
    assert mlp is not None and "per-operation overhead to work-bound ones" in mlp
    cnn = cost_caption(SweepSpec.from_dict({"model": {"arch": "cnn", "width": 8, "depth": 4},
                                            "data": {"dataset": "digits"}, "train": {"steps": 1000}}))  # fmt: skip
    assert cnn is not None and "work alone for the cnn" in cnn
    assert "test and sharpness measured several times below it" in cnn
