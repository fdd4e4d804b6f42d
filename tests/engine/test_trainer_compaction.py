"""Dead members leave the batched computation at the flush where they die (engine/trainer.py), and
every recorded point, result and early on_result is bit for bit what a run without compaction gives.

Widths are multiples of 16, as in real nets: at tiny odd widths (a width-3 CNN) oneDNN's convolution
rounds a channel by its place in a SIMD block, so a member that moves changes in the last bit."""

import numpy as np
import pytest

from engine.config import ModelConfig
from engine.diagnostics_cost import eval_plan
from engine.models import build_model
from engine.trainer import train_on_stream
from tests.engine.test_trainer_ensemble import SHAPES, SyntheticStream, make_configs

METRICS = ("test", "alignment", "sharpness", "movement")
MODELS = {
    "mlp": ModelConfig(arch="mlp", width=16, depth=3),
    "cnn": ModelConfig(arch="cnn", width=16, depth=4),
    "resnet": ModelConfig(arch="resnet", width=16, depth=2),
    "vit": ModelConfig(arch="vit", width=16, depth=2, patch=4, heads=2),
}


def configs_of(arch, cells, **kw):
    return [c.replace(model=MODELS[arch]) for c in make_configs(arch, cells, **kw)]


def _run(configs, arch, compact, cancel_id, monkeypatch):
    """Train with a per-run cancel of cancel_id at the third flush; returns (every recorded point as
    (member, run id, step, metric, value) rows, results, on_result calls, ensemble size per step)."""
    model_cls = type(build_model(configs[0].model, SHAPES[arch], 3))
    sizes: list[int] = []
    original = model_cls.train_step

    def spy(self, params, *args, **kwargs):
        sizes.append(next(iter(params.values())).shape[0])
        return original(self, params, *args, **kwargs)

    monkeypatch.setattr(model_cls, "train_step", spy)
    points, ended, flushes = [], [], {"n": 0}

    def keep(batch):
        for j in range(len(batch)):
            m = int(batch.member[j])
            points.append((m, batch.run_ids[m], int(batch.step[j]), batch.metric[j], float(batch.value[j])))

    def cancel():
        flushes["n"] += 1
        return {cancel_id} if flushes["n"] >= 3 else set()

    results = train_on_stream(configs, SyntheticStream(SHAPES[arch]), flush_every=3, on_metrics=keep,
                              on_result=ended.append, should_cancel=cancel, compact=compact)  # fmt: skip
    monkeypatch.undo()
    return points, results, ended, sizes


@pytest.mark.parametrize(
    "arch", ["mlp", "cnn", pytest.param("resnet", marks=pytest.mark.slow), pytest.param("vit", marks=pytest.mark.slow)]
)
def test_compaction_changes_no_recorded_value(arch, monkeypatch):
    scale = 0.1 if arch == "resnet" else 1.0  # a width-3 ResNet is sharp: smaller η keeps members stable
    # seeds repeat (θ0 slots shared by the MLP), two members diverge within a few steps, one is cancelled
    cells = [(0.5, 0.02 * scale, 0), (1.0, 1e4, 1), (2.0, 0.1 * scale, 0), (1.0, 30.0 * scale, 2),
             (4.0, 0.2 * scale, 1), (1.0, 0.05 * scale, 3)]  # fmt: skip
    # the per-member NTK loop (alignment) and the power iteration (sharpness) are the same code for
    # every vmap architecture: the CNN covers both, the ViT the sharpness, the (slowest) ResNet neither
    metrics = {"vit": ("test", "sharpness", "movement"), "resnet": ("test", "movement")}.get(arch, METRICS)
    configs = configs_of(arch, cells, steps=12, metrics=metrics, eval_points=4)
    cancel_id = configs[2].run_id
    compacted = _run(configs, arch, True, cancel_id, monkeypatch)
    full = _run(configs, arch, False, cancel_id, monkeypatch)

    points, results, ended, sizes = compacted
    statuses = [r.status for r in results]
    assert statuses.count("diverged") >= 2 and statuses[2] == "cancelled" and statuses.count("done") >= 2
    assert full[3] == [6] * 12  # without compaction every member runs every step
    assert sizes[0] == 6 and sizes[-1] == statuses.count("done") and sizes == sorted(sizes, reverse=True)
    assert points == full[0]  # every point of every member, in the same order, bit for bit
    assert results == full[1]  # statuses, steps and every summary value (tail_train_loss too)
    assert ended == full[2]  # the early results of the dead members, at the same flushes
    assert {r.run_id for r in ended} == {r.run_id for r in results if r.status != "done"}
    done = [r for r in results if r.status == "done"]
    assert all("tail_train_loss" in r.summary and "final_test_loss" in r.summary for r in done)
    if "sharpness" in metrics:  # warm-started from the gathered eigenvectors after compaction
        sharp = [p for p in points if p[3] == "sharpness" and p[1] == done[0].run_id]
        assert [p[2] for p in sharp] == eval_plan(configs[0]) and np.isfinite([p[4] for p in sharp]).all()
        assert sharp[-1][2] > 8  # an eval after the compactions (the cancel at the third flush, step 8)


@pytest.mark.parametrize("arch", ["mlp", "vit"])
def test_a_lone_survivor_trains_as_without_compaction(arch, monkeypatch):
    # the ViT keeps a frozen dead member beside a lone survivor (vmap over one member rounds otherwise)
    cells = [(1.0, 1e4, 0), (1.0, 0.05, 1), (2.0, 1e4, 2)]
    configs = configs_of(arch, cells, steps=9)
    compacted = _run(configs, arch, True, "none", monkeypatch)
    full = _run(configs, arch, False, "none", monkeypatch)
    assert [r.status for r in compacted[1]] == ["diverged", "done", "diverged"]
    assert compacted[3][-1] == build_model(MODELS[arch], SHAPES[arch], 3).min_members
    assert compacted[0] == full[0] and compacted[1] == full[1] and compacted[2] == full[2]
