"""The η* ridge of Trajectories and Overlays (app.logic.selection.ridge_runs) reads the tail statistic
(issue 11), and the final batch's loss only where a run has no tail statistic."""

from __future__ import annotations

import numpy as np
import pandas as pd

from app.logic.selection import ridge_runs


def _runs(**columns: list[float]) -> pd.DataFrame:
    base = {"run_id": ["a", "b", "c"], "gamma": [1.0, 1.0, 1.0], "eta": [0.1, 1.0, 10.0], "status": ["done"] * 3}
    return pd.DataFrame(base | columns)


def test_the_ridge_follows_the_tail_mean_not_the_last_batch() -> None:
    # the last batch of η = 1 happened to be lucky; over the last 10 % of steps η = 0.1 is better
    runs = _runs(final_train_loss=[0.20, 0.05, 0.30], tail_train_loss=[0.10, 0.15, 0.30])
    assert ridge_runs(runs)["eta"].tolist() == [0.1]
    assert ridge_runs(runs, "final_train_loss")["eta"].tolist() == [1.0]


def test_runs_without_a_tail_statistic_fall_back_to_the_final_batch() -> None:
    assert ridge_runs(_runs(final_train_loss=[0.20, 0.05, 0.30]))["eta"].tolist() == [1.0]
    older = _runs(final_train_loss=[0.20, 0.05, 0.30], tail_train_loss=[np.nan, np.nan, 0.30])
    assert ridge_runs(older)["eta"].tolist() == [1.0]
