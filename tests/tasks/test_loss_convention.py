"""The one statement of how logged losses are normalized (engine.metrics.loss_convention), what the
dashboard's loss pages and the reproduce reports show."""

from __future__ import annotations

import pytest
import torch

from engine.config import DataConfig
from engine.data import make_stream, n_outputs
from engine.metrics import loss_convention, mse_loss
from tasks.reproduce import loss_factor
from tasks.spec import loss_conventions


@pytest.mark.parametrize(
    "data", [DataConfig(dataset="mnist1d"), DataConfig(dataset="teacher", n_classes=3, input_dim=4),
             DataConfig(dataset="digits", test_size=10)]
)
def test_n_outputs_is_the_streams_output_count(data: DataConfig):
    assert n_outputs(data) == make_stream(data, batch_size=2).n_outputs


def test_mse_is_the_mean_over_outputs_so_the_papers_sum_is_c_times_it():
    out = torch.randn(1, 8, 5, dtype=torch.float64)
    target = torch.randn(8, 5, dtype=torch.float64)
    summed = ((out[0] - target) ** 2).sum(dim=1).mean()  # the authors' code: sum over outputs
    assert float(summed) == pytest.approx(5 * float(mse_loss(out, target)[0]), rel=1e-12)
    text = loss_convention("mse", 5)
    assert "mean over batch × 5 outputs" in text and "multiply by 5" in text


def test_one_output_and_cross_entropy_need_no_factor():
    assert "multiply" not in loss_convention("mse", 1)
    assert "cross-entropy" in loss_convention("xent", 10)


def test_specs_state_each_convention_once_and_skip_unreadable_ones():
    a = {"name": "a", "data": {"dataset": "mnist1d"}, "grid": {"gamma": [1.0], "eta": [0.1]}}
    b = {"name": "b", "data": {"dataset": "teacher", "n_classes": 2}, "grid": {"gamma": [1.0], "eta": [0.1]}}
    text = loss_conventions([a, dict(a, name="a2"), b, {"model": {"arch": "nope"}}])
    assert text.count("multiply by 10") == 1 and text.count("multiply by 2") == 1
    assert loss_conventions([]) == ""
    assert loss_factor([]) == "no network loss in this report"
