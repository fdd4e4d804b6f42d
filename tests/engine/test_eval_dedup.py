"""Members with the same θ, θ0 and γ are evaluated once (engine.trainer.DEDUPLICATE_EVALS): at step 0
every η of a seed and γ. Every recorded point is what evaluating each member on its own gives: bit
for bit for the test loss, the alignments and the movement, and for a representative's sharpness
(it keeps its random start vector); a duplicate's sharpness is its twin's, within the eigensolver's
tolerance of its own (a different random start)."""

import dataclasses

import numpy as np
import pytest
import torch

from engine import trainer
from engine.trainer import _distinct_members, _Ensemble, train_on_stream
from tests.engine.test_trainer_compaction import configs_of
from tests.engine.test_trainer_ensemble import SHAPES, SyntheticStream

METRICS = ("test", "alignment", "sharpness", "movement")
# (γ, η, seed): three η for (1.0, seed 0), two for (0.5, seed 1), a lone (1.0, seed 1), (2.0, seed 0) twice
CELLS = [(1.0, 0.01, 0), (0.5, 0.02, 1), (1.0, 0.05, 0), (1.0, 0.02, 1), (0.5, 0.05, 1), (1.0, 0.1, 0),
         (2.0, 0.01, 0), (2.0, 0.03, 0)]  # fmt: skip
TWIN_OF = {2: 0, 4: 1, 5: 0, 7: 6}  # member → the earlier member it shares θ0 and γ with


def _points(configs, arch, dedup, monkeypatch):
    monkeypatch.setattr(trainer, "DEDUPLICATE_EVALS", dedup)
    points: dict[tuple[int, int, str], float] = {}

    def keep(batch):
        for j in range(len(batch)):
            points[int(batch.member[j]), int(batch.step[j]), batch.metric[j]] = float(batch.value[j])

    train_on_stream(configs, SyntheticStream(SHAPES[arch]), flush_every=3, on_metrics=keep)
    return points


@pytest.mark.parametrize(
    "arch", ["mlp", "cnn", pytest.param("resnet", marks=pytest.mark.slow), pytest.param("vit", marks=pytest.mark.slow)]
)
def test_deduplicated_evals_record_what_each_member_gives(arch, monkeypatch):
    metrics = {"resnet": ("test", "sharpness", "movement")}.get(arch, METRICS)  # the ResNet's NTK loop is slow
    scale = 0.1 if arch == "resnet" else 1.0
    cells = [(g, e * scale, s) for g, e, s in CELLS]
    configs = configs_of(arch, cells, steps=10, metrics=metrics, eval_points=4)
    shared = _points(configs, arch, True, monkeypatch)
    alone = _points(configs, arch, False, monkeypatch)

    assert shared.keys() == alone.keys()
    steps = sorted({step for _, step, _ in alone})
    assert steps[0] == 0 and len(steps) >= 3
    for (member, step, metric), value in alone.items():
        got = shared[member, step, metric]
        if metric != "sharpness" or member not in TWIN_OF:
            assert got == value, (member, step, metric)  # bit for bit
        else:  # its twin's eigenvalue at step 0, and warm-started from its twin's vector after
            assert got == pytest.approx(value, rel=1e-3), (member, step)
    for member, twin in TWIN_OF.items():  # the same numbers at step 0, where θ = θ0
        for metric in {m for _, s, m in alone if s == 0}:
            assert shared[member, 0, metric] == shared[twin, 0, metric], (member, metric)
    # training went on apart: different η give different points after step 0
    assert shared[2, steps[-1], "test_loss"] != shared[0, steps[-1], "test_loss"]


def test_distinct_members_are_matched_exactly():
    """Same sums is not enough: a member is a duplicate only when every parameter is bit-equal."""
    k = 4
    params = {"w": torch.zeros(k, 3, dtype=torch.float64)}
    params["w"][0] = torch.tensor([1.0, 2.0, 3.0])
    params["w"][1] = torch.tensor([3.0, 2.0, 1.0])  # the same sum as member 0, not the same θ
    params["w"][2] = torch.tensor([1.0, 2.0, 3.0])  # member 0's twin
    params["w"][3] = torch.tensor([1.0, 2.0, 3.0])  # member 0's θ at another γ
    gamma = torch.tensor([1.0, 1.0, 1.0, 2.0], dtype=torch.float64)

    def ens(p0):
        return _Ensemble(members=np.arange(k), params=params, params0={"w": p0}, centered=True, gamma=gamma,
                         lr=gamma, alive=torch.ones(k, dtype=torch.bool), diverged_at=torch.full((k,), -1),
                         threshold=gamma, loss_buf=torch.empty(1, k))  # fmt: skip

    reps, inverse = _distinct_members(ens(torch.zeros(k, 3, dtype=torch.float64)))
    assert reps.tolist() == [0, 1, 3] and inverse.tolist() == [0, 1, 0, 2]
    p0 = torch.zeros(k, 3, dtype=torch.float64)
    p0[2, 1] = 1e-300  # θ0 differs in one float: centered members are then not the same function
    assert _distinct_members(ens(p0)) is None
    uncentered = dataclasses.replace(ens(p0), centered=False)  # θ0 takes no part then
    assert _distinct_members(uncentered)[0].tolist() == [0, 1, 3]
