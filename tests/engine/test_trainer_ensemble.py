"""train_ensemble: the batched ensemble equals K separate single runs; divergence; cancel; metrics."""

import numpy as np
import pytest
import torch

from engine import metrics as M
from engine.config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig
from engine.models import build_model
from engine.trainer import MetricBatch, eval_plan, eval_steps, train_on_stream

D64 = torch.float64
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # CUDA cases run where a GPU is present


class Batch:
    def __init__(self, x, target, label):
        self.x, self.target, self.label = x, target, label


class SyntheticStream:
    """A fresh Gaussian batch every step with targets from a fixed random linear teacher."""

    def __init__(self, input_shape, n_outputs=3, batch_size=8, seed=0, dtype=D64, device="cpu"):
        self.input_shape, self.n_outputs, self.batch_size, self.dtype = tuple(input_shape), n_outputs, batch_size, dtype
        self.device = device
        self.gen = torch.Generator().manual_seed(seed)
        d = int(np.prod(input_shape))
        self.teacher = torch.randn(d, n_outputs, generator=torch.Generator().manual_seed(999), dtype=D64) / d**0.5

    def _make(self, n, gen):
        x = torch.randn(n, *self.input_shape, generator=gen, dtype=D64)
        y = x.reshape(n, -1) @ self.teacher
        return Batch(x.to(self.device, self.dtype), y.to(self.device, self.dtype), y.argmax(1).to(self.device))

    def next_batch(self):
        return self._make(self.batch_size, self.gen)

    def test_set(self):
        return self._make(32, torch.Generator().manual_seed(123))

    def probe(self, n):
        return self._make(n, torch.Generator().manual_seed(456))


SHAPES = {"mlp": (6,), "cnn": (1, 8, 8), "resnet": (1, 8, 8), "vit": (1, 8, 8)}
MODELS = {
    "mlp": ModelConfig(arch="mlp", width=16, depth=3),
    "cnn": ModelConfig(arch="cnn", width=3, depth=4),
    "resnet": ModelConfig(arch="resnet", width=3, depth=2),
    "vit": ModelConfig(arch="vit", width=8, depth=2, patch=4, heads=2),
}


def make_configs(arch, cells, steps=6, metrics=(), eval_points=0, factor=1e3, loss="mse"):
    image = arch != "mlp"
    data = DataConfig(dataset="teacher", input_dim=6, image_size=8 if image else 0, n_classes=3)
    train = TrainConfig(batch_size=8, steps=steps, dtype="float64", metrics=metrics, eval_points=eval_points,
                        divergence_factor=factor, probe_size=8, loss=loss)  # fmt: skip
    return [RunConfig(model=MODELS[arch], data=data, train=train, gamma=g, eta=e, seed=s) for g, e, s in cells]


def single_run_reference(cfg, steps, input_shape):
    """The slow independent path: one member, its plain (unbatched) forward, autograd, torch.optim.SGD."""
    model = build_model(cfg.model, input_shape, 3)
    init = model.init([cfg.seed], dtype=D64)
    params = {n: torch.nn.Parameter(t[0].clone()) for n, t in init.items()}
    params0 = {n: t[0].clone() for n, t in init.items()}
    opt = torch.optim.SGD(params.values(), lr=cfg.learning_rate)
    stream = SyntheticStream(input_shape)
    gamma = torch.tensor(cfg.gamma, dtype=D64)
    losses = []
    for _ in range(steps):
        b = stream.next_batch()
        out = model.output_one(params, params0 if cfg.model.centered else None, b.x, gamma)
        loss = M.loss_fn(cfg.train.loss, out.unsqueeze(0), b.target, b.label)[0]
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return losses, {n: p.detach() for n, p in params.items()}


def collect(configs, stream, **kw):
    batches: list[MetricBatch] = []
    results = train_on_stream(configs, stream, on_metrics=batches.append, **kw)
    return results, batches


def series(batches, member, metric):
    steps, values = [], []
    for b in batches:
        s, m, v = b.for_run(member)
        sel = [i for i, name in enumerate(m) if name == metric]
        steps += list(s[sel])
        values += list(v[sel])
    return np.array(steps), np.array(values)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ["mlp", "cnn", "resnet", pytest.param("vit", marks=pytest.mark.slow)])
def test_ensemble_equals_separate_single_runs(arch, device):
    # on a GPU the ensemble runs there and the single runs stay on the CPU: the CUDA path is checked too
    scale = 0.1 if arch == "resnet" else 1.0  # a width-3 ResNet is sharp: smaller η keeps all members stable
    cells = [(0.5, 0.02 * scale, 0), (1.0, 0.05 * scale, 1), (4.0, 0.2 * scale, 2)]
    configs = make_configs(arch, cells)
    results, batches = collect(configs, SyntheticStream(SHAPES[arch], device=device), device=device, flush_every=4)
    assert [r.status for r in results] == ["done"] * 3
    for i, cfg in enumerate(configs):
        ref_losses, _ = single_run_reference(cfg, 6, SHAPES[arch])
        steps, losses = series(batches, i, "train_loss")
        assert list(steps) == list(range(6))
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-9, atol=1e-12)
        assert results[i].summary["final_train_loss"] == pytest.approx(ref_losses[-1], rel=1e-9)


@pytest.mark.parametrize("arch", ["mlp", "cnn", "resnet", pytest.param("vit", marks=pytest.mark.slow)])
def test_ensemble_parameters_equal_single_run_parameters(arch, monkeypatch):
    # the trainer's parameters are internal: intercept train_step to keep a handle on them
    from engine import mlp as mlp_mod
    from engine import models as models_mod

    cells = [(0.5, 0.005, 3), (2.0, 0.05, 4)]
    configs = make_configs(arch, cells, steps=4)
    model_cls = type(build_model(configs[0].model, SHAPES[arch], 3))
    seen = {}
    original = model_cls.train_step

    def spy(self, params, *args, **kwargs):
        seen["params"] = params
        return original(self, params, *args, **kwargs)

    monkeypatch.setattr(model_cls, "train_step", spy)
    assert model_cls.__module__ in (models_mod.__name__, mlp_mod.__name__)
    train_on_stream(configs, SyntheticStream(SHAPES[arch]))
    for i, cfg in enumerate(configs):
        _, ref = single_run_reference(cfg, 4, SHAPES[arch])
        for name, p in ref.items():
            torch.testing.assert_close(seen["params"][name][i], p, rtol=1e-9, atol=1e-12)


def test_diverging_member_does_not_disturb_the_others():
    good = [(1.0, 0.05, 0), (2.0, 0.2, 1)]
    bad = (1.0, 1e4, 2)
    steps = 12
    with_bad, b1 = collect(
        make_configs("mlp", [good[0], bad, good[1]], steps=steps), SyntheticStream((6,)), flush_every=5
    )
    without, b2 = collect(make_configs("mlp", good, steps=steps), SyntheticStream((6,)), flush_every=5)
    assert with_bad[1].status == "diverged"
    d = with_bad[1].diverged_step
    assert d is not None and with_bad[1].steps_done == d + 1
    s_bad, v_bad = series(b1, 1, "train_loss")
    assert list(s_bad) == list(range(d + 1))  # the diverged step is kept, nothing after it
    assert not (np.isfinite(v_bad[-1]) and v_bad[-1] <= 1e3 * v_bad[0])
    for i_with, i_without in ((0, 0), (2, 1)):
        assert with_bad[i_with].status == "done"
        np.testing.assert_array_equal(series(b1, i_with, "train_loss")[1], series(b2, i_without, "train_loss")[1])


def test_cancel_stops_within_one_flush_and_progress_is_reported():
    configs = make_configs("mlp", [(1.0, 0.1, 0), (1.0, 0.1, 1)], steps=100)
    calls = {"n": 0}
    progress = []

    def cancel():
        calls["n"] += 1
        return calls["n"] >= 2  # cancel at the second flush

    results, batches = collect(configs, SyntheticStream((6,)), should_cancel=cancel, flush_every=10,
                               on_progress=lambda s, t: progress.append((s, t)))  # fmt: skip
    assert [r.status for r in results] == ["cancelled", "cancelled"]
    assert [r.steps_done for r in results] == [20, 20]
    assert progress == [(10, 100), (20, 100)]
    assert series(batches, 0, "train_loss")[0].max() == 19


def test_cancelling_one_run_freezes_only_that_member():
    configs = make_configs("mlp", [(1.0, 0.1, 0), (1.0, 0.1, 1), (2.0, 0.05, 2)], steps=40)
    target = configs[1].run_id
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return {target} if calls["n"] >= 2 else set()  # ask at the second flush

    results, batches = collect(configs, SyntheticStream((6,)), should_cancel=cancel, flush_every=10)
    assert [r.status for r in results] == ["done", "cancelled", "done"]
    assert [r.steps_done for r in results] == [40, 20, 40]
    assert series(batches, 1, "train_loss")[0].max() == 19  # nothing recorded after the cancel
    # the others train on exactly as without the cancelled member
    alone, b_alone = collect([configs[0], configs[2]], SyntheticStream((6,)), flush_every=10)
    for i_with, i_without in ((0, 0), (2, 1)):
        np.testing.assert_array_equal(
            series(batches, i_with, "train_loss")[1], series(b_alone, i_without, "train_loss")[1]
        )


def test_loop_ends_once_every_member_diverged():
    configs = make_configs("mlp", [(1.0, 1e4, 0), (1.0, 3e4, 1)], steps=500)
    progress = []
    results, _ = collect(configs, SyntheticStream((6,)), flush_every=5, on_progress=lambda s, t: progress.append(s))
    assert [r.status for r in results] == ["diverged", "diverged"]
    assert progress[-1] < 500  # stopped early instead of training frozen members to the end


def test_divergence_threshold_allows_the_lazy_catapult():
    """A loss spike of a few thousand × the initial loss is a divergence at γ = 1 but, at γ = 0.01,
    within the 1/γ² catapult allowance (divergence_factor × max(1, 1/γ²) × step-0 loss)."""
    from engine.trainer import train_on_stream as run

    class Spike(SyntheticStream):
        """Targets blow up 5000× at step 3 only: the loss before the update spikes, then recovers."""

        def __init__(self):
            super().__init__((6,))
            self.t = 0

        def next_batch(self):
            b = super().next_batch()
            if self.t == 3:
                b = Batch(b.x, b.target * 100.0, b.label)  # loss × 1e4
            self.t += 1
            return b

    tiny_eta = 1e-12  # no learning: the loss tracks the targets alone
    for gamma, expected in ((1.0, "diverged"), (0.01, "done")):
        cfg = make_configs("mlp", [(gamma, tiny_eta, 0)], steps=8)
        assert run(cfg, Spike())[0].status == expected, gamma


@pytest.mark.slow
def test_eval_metrics_on_schedule_and_train_loss_every_step():
    configs = make_configs("mlp", [(1.0, 0.1, 0), (0.5, 0.3, 1)], steps=30,
                           metrics=("test", "alignment", "sharpness", "movement"), eval_points=5)  # fmt: skip
    results, batches = collect(configs, SyntheticStream((6,)), flush_every=7)
    sched = eval_plan(configs[0])  # eval_steps(30, 5) as train.eval_budget bounds it
    assert len(sched) >= 3 and sched[0] == 0 and sched[-1] == 29 and set(sched) <= set(eval_steps(30, 5))
    names = ["test_loss", "test_acc", "alignment_feature", "alignment_feature_centered", "alignment_ntk",
             "alignment_ntk_centered", "sharpness", "movement_l1", "movement_l2", "movement_l3"]  # fmt: skip
    for i in range(2):
        assert list(series(batches, i, "train_loss")[0]) == list(range(30))
        for name in names:
            steps, vals = series(batches, i, name)
            assert list(steps) == sched, name
            assert np.isfinite(vals).all(), name
        mv = series(batches, i, "movement_l1")[1]
        assert mv[0] == 0 and mv[-1] > 0
        al = series(batches, i, "alignment_feature")[1]
        assert ((al > -1) & (al <= 1 + 1e-12)).all()
        assert series(batches, i, "sharpness")[1][-1] > 0
        assert set(results[i].summary) == {
            "final_train_loss", "best_train_loss", "tail_train_loss", "final_test_loss", "final_test_acc"
        }  # fmt: skip
        # the tail statistic: the mean of the last 10 % of the 30 logged losses (3 steps, flushes apart)
        tail = series(batches, i, "train_loss")[1][-3:]
        assert results[i].summary["tail_train_loss"] == pytest.approx(tail.mean(), rel=1e-12)
    for b in batches:
        assert b.member.dtype == np.int32 and b.step.dtype == np.int64 and b.value.dtype == np.float64
        assert len(b.metric) == len(b.value) == len(b.step)


def test_xent_initial_loss_is_log_classes():
    configs = make_configs("mlp", [(1.0, 0.1, 0)], steps=2, loss="xent")
    _, batches = collect(configs, SyntheticStream((6,)))
    assert series(batches, 0, "train_loss")[1][0] == pytest.approx(np.log(3))


def test_eval_steps_are_log_spaced_with_both_ends():
    s = eval_steps(1000, 30)
    assert s[0] == 0 and s[-1] == 999 and s == sorted(set(s))
    assert 20 <= len(s) <= 32
    assert eval_steps(5, 30) == [0, 1, 2, 3, 4]
    assert eval_steps(10, 0) == []


def test_ensemble_refuses_mixed_shapes_and_dtypes():
    a = make_configs("mlp", [(1.0, 0.1, 0)])[0]
    with pytest.raises(ConfigError) as e:
        train_on_stream([a, a.replace(model=ModelConfig(width=8))], SyntheticStream((6,)))
    assert e.value.field == "configs"
    auto = a.replace(train=TrainConfig(batch_size=8, steps=6, dtype="auto", metrics=()))
    with pytest.raises(ConfigError):  # γ=1e-3 → float64, γ=1 → float32: different shape keys
        train_on_stream([auto.replace(gamma=1e-3), auto], SyntheticStream((6,)))
