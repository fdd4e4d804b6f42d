"""train.optimizer = "adam" (engine/optim.py): the batched Adam equals torch.optim.Adam run member by
member with the same per-layer rates; frozen members stay put; compaction changes nothing; the
per-layer rates make the first step's effect width-independent (a μP coordinate check); the new
field leaves every existing run id alone."""

import dataclasses
import math

import pytest
import torch

from engine import metrics as M
from engine.config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig
from engine.models import build_model
from engine.optim import BETA1, BETA2, EPS_RELATIVE, AdamState, adam_step, gradient_scales, layer_rates
from engine.trainer import train_on_stream
from tests.engine.test_trainer_ensemble import SHAPES, SyntheticStream, make_configs

D64 = torch.float64
MODELS = {
    "mlp": ModelConfig(arch="mlp", width=16, depth=3),
    "cnn": ModelConfig(arch="cnn", width=16, depth=4),
}
CELLS = [(0.05, 0.02, 0), (1.0, 0.1, 1), (20.0, 0.3, 2)]  # (γ, η, seed): lazy, middle, rich
STEPS = 6


def adam_configs(arch, cells=CELLS, steps=STEPS, factor=1e3, model=None):
    """Adam runs of these (γ, η, seed) cells, on MODELS[arch] unless `model` is given."""
    return [
        c.replace(model=model or MODELS[arch], train=dataclasses.replace(c.train, optimizer="adam"))
        for c in make_configs(arch, cells, steps=steps, factor=factor)
    ]


def reference_params(cfg, input_shape, steps):
    """One member, its plain forward, autograd and torch.optim.Adam with one param group per tensor
    (lr = η · rate, eps = EPS_RELATIVE · scale / γ): the slow independent path."""
    model = build_model(cfg.model, input_shape, 3)
    init = model.init([cfg.seed], dtype=D64)
    params = {n: torch.nn.Parameter(t[0].clone()) for n, t in init.items()}
    params0 = {n: t[0].clone() for n, t in init.items()}
    rates, scales = layer_rates(model), gradient_scales(model)
    groups = [{"params": [p], "lr": cfg.eta * rates[n], "eps": EPS_RELATIVE * scales[n] / cfg.gamma}
              for n, p in params.items()]  # fmt: skip
    opt = torch.optim.Adam(groups, betas=(BETA1, BETA2), foreach=False)
    stream = SyntheticStream(input_shape)
    gamma = torch.tensor(cfg.gamma, dtype=D64)
    losses = []
    for _ in range(steps):
        b = stream.next_batch()
        out = model.output_one(params, params0, b.x, gamma)
        loss = M.loss_fn(cfg.train.loss, out.unsqueeze(0), b.target, b.label)[0]
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {n: p.detach() for n, p in params.items()}, losses


def batched_params(configs, input_shape, steps, eta=None):
    model = build_model(configs[0].model, input_shape, 3)
    params, params0 = model.init_pair([c.seed for c in configs], dtype=D64)
    state = AdamState.zeros(model, params)
    gamma = torch.tensor([c.gamma for c in configs], dtype=D64)
    eta = torch.tensor([c.eta for c in configs], dtype=D64) if eta is None else eta
    stream = SyntheticStream(input_shape)
    losses = []
    for _ in range(steps):
        b = stream.next_batch()
        losses.append(adam_step(model, state, params, params0, b.x, b.target, b.label, gamma, eta, "mse"))
    return model, params, params0, state, torch.stack(losses)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_batched_adam_equals_torch_adam_member_by_member(arch):
    configs = adam_configs(arch)
    _, params, _, _, losses = batched_params(configs, SHAPES[arch], STEPS)
    for k, cfg in enumerate(configs):
        ref, ref_losses = reference_params(cfg, SHAPES[arch], STEPS)
        torch.testing.assert_close(losses[:, k], torch.tensor(ref_losses, dtype=D64), rtol=1e-10, atol=1e-12)
        for name, p in ref.items():
            torch.testing.assert_close(params[name][k], p, rtol=1e-10, atol=1e-12, msg=f"{arch} {name} member {k}")
            assert not torch.equal(params[name][k], build_model(cfg.model, SHAPES[arch], 3).init([cfg.seed],
                                   dtype=D64)[name][0]), f"{name} did not move"  # fmt: skip


def test_the_mlp_packed_layout_stays_valid_under_adam():
    """The MLP's w, b are views into its packed (K + U, out, P) buffers: Adam updates them in place,
    so after Adam steps an SGD step still finds the packed layout (and the padding stays zero)."""
    configs = adam_configs("mlp")
    model, params, params0, _, _ = batched_params(configs, SHAPES["mlp"], 2)
    found = model._packed(params, params0)
    assert found is not None
    for layer, base in enumerate(found[0], start=1):
        assert torch.all(base[:, :, model.dims[layer - 1] + 1 :] == 0)


def test_frozen_members_are_not_updated_and_nan_gradients_do_not_reach_them():
    configs = adam_configs("mlp")
    model = build_model(configs[0].model, SHAPES["mlp"], 3)
    params, params0 = model.init_pair([c.seed for c in configs], dtype=D64)
    before = {n: p.clone() for n, p in params.items()}
    state = AdamState.zeros(model, params)
    gamma = torch.tensor([0.05, math.nan, 20.0], dtype=D64)  # member 1's output and gradients are NaN
    eta = torch.tensor([0.02, 0.0, 0.3], dtype=D64)  # and it is frozen
    stream = SyntheticStream(SHAPES["mlp"])
    for _ in range(3):
        b = stream.next_batch()
        adam_step(model, state, params, params0, b.x, b.target, b.label, gamma, eta, "mse")
    for name, p in params.items():
        assert torch.equal(p[1], before[name][1]), name
        assert torch.isfinite(p).all(), name
        assert not torch.equal(p[0], before[name][0]) and not torch.equal(p[2], before[name][2]), name
        assert torch.all(state.m[name][1] == 0) and torch.all(state.v[name][1] == 0)
    assert state.steps.tolist() == [3.0, 0.0, 3.0]


def test_a_diverged_adam_member_is_reset_finite_and_the_others_train_as_alone():
    """η = 1e3 at γ = 0.05 blows up within a few steps (divergence_factor 2); its parameters go back to
    θ0 and its Adam state to zero, and the survivors' losses equal those of a run without it."""
    cells = [(0.05, 0.02, 0), (0.05, 1e3, 1), (20.0, 0.3, 2)]
    configs = adam_configs("mlp", cells, steps=12, factor=2.0)
    results = train_on_stream(configs, SyntheticStream(SHAPES["mlp"]), flush_every=4)
    assert [r.status for r in results] == ["done", "diverged", "done"]
    alone = train_on_stream([configs[0], configs[2]], SyntheticStream(SHAPES["mlp"]), flush_every=4)
    for a, b in zip([results[0], results[2]], alone, strict=True):
        assert a.summary == pytest.approx(b.summary, rel=1e-12)


def assert_compaction_changes_nothing(configs, input_shape):
    """Train with and without compaction, configs[1] cancelled at the second flush (flush_every 3):
    every recorded point must agree, and the survivors must train on to the last step."""
    runs = {}
    for compact in (True, False):
        points, calls = [], {"n": 0}

        def cancel(calls=calls):
            calls["n"] += 1
            return {configs[1].run_id} if calls["n"] >= 2 else set()

        def keep(batch, points=points):
            for j in range(len(batch)):
                points.append((int(batch.member[j]), int(batch.step[j]), batch.metric[j], float(batch.value[j])))

        train_on_stream(configs, SyntheticStream(input_shape), flush_every=3, on_metrics=keep,
                        should_cancel=cancel, compact=compact)  # fmt: skip
        runs[compact] = sorted(points)
    assert len(runs[True]) == len(runs[False])
    for (m1, s1, n1, v1), (m2, s2, n2, v2) in zip(runs[True], runs[False], strict=True):
        assert (m1, s1, n1) == (m2, s2, n2)
        assert v1 == pytest.approx(v2, rel=1e-12, abs=1e-15)
    last = configs[0].train.steps - 1
    assert max(s for m, s, *_ in runs[True] if m == 0) == last  # the survivors trained on after the cancel


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_compaction_keeps_the_survivors_losses_under_adam(arch):
    """A per-run cancel at the second flush compacts the ensemble: Adam's m, v and steps must follow
    the survivors (a stale slot would give them another member's moments)."""
    assert_compaction_changes_nothing(adam_configs(arch, steps=9), SHAPES[arch])


def _first_step_changes(width, rates=None):
    """RMS change of each hidden pre-activation layer and of f after one Adam step at γ = 1, η = 0.1,
    on a fixed input batch: the μP coordinate check."""
    model = build_model(ModelConfig(arch="mlp", width=width, depth=3), (16,), 2)
    params, params0 = model.init_pair([0], dtype=D64)
    state = AdamState.zeros(model, params)
    if rates is not None:
        state.rates = rates(model)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(64, 16, generator=gen, dtype=D64)
    y = torch.nn.functional.one_hot(torch.arange(64) % 2, 2).to(D64)
    gamma, eta = torch.tensor([1.0], dtype=D64), torch.tensor([0.1], dtype=D64)
    hs0 = [h.clone() for h in model.preactivations(params, x)]
    f0 = model.output(params, params0, x, gamma).clone()
    adam_step(model, state, params, params0, x, y, y.argmax(1), gamma, eta, "mse")
    hs1 = model.preactivations(params, x)
    f1 = model.output(params, params0, x, gamma)
    rms = [float((b - a).pow(2).mean().sqrt()) for a, b in zip(hs0, hs1, strict=True)]
    return rms + [float((f1 - f0).pow(2).mean().sqrt())]


def test_first_adam_step_moves_features_and_output_by_a_width_independent_amount():
    widths = (64, 128, 256)
    changes = [_first_step_changes(n) for n in widths]  # per width: [Δh1, Δh2, Δf]
    for i in range(3):
        series = [c[i] for c in changes]
        assert all(s > 0 for s in series)
        assert max(series) / min(series) < 1.5, (i, series)
    # the check has teeth: one rate η for every layer (no 1/sqrt(fan_in)) makes the second hidden
    # layer's change grow like sqrt(N): ×2 from 64 to 256
    flat = [_first_step_changes(n, rates=lambda m: dict.fromkeys(m.specs, 1.0))[1] for n in (64, 256)]
    assert flat[1] / flat[0] > 1.7, flat


def test_adam_layer_rates_follow_the_multipliers():
    mlp = build_model(ModelConfig(arch="mlp", width=64, depth=3), (16,), 2)
    assert layer_rates(mlp) == pytest.approx({"w1": 1 / 4, "b1": 1 / 4, "w2": 1 / 8, "b2": 1 / 8, "w3": 1.0, "b3": 1.0})
    cnn = build_model(ModelConfig(arch="cnn", width=16, depth=4), (1, 8, 8), 3)
    rates = layer_rates(cnn)
    assert rates["conv1"] == 1.0 and rates["conv2"] == pytest.approx(1 / 4)  # fan_in = C_in, as the multiplier
    assert rates["dense"] == pytest.approx(1 / math.sqrt(2 * 16 * 2 * 2)) and rates["readout"] == 1.0


def test_optimizer_field_leaves_default_ids_alone_and_changes_adam_ids():
    base = RunConfig(model=ModelConfig(width=32), data=DataConfig(dataset="teacher", input_dim=8, n_classes=2),
                     train=TrainConfig(steps=10), gamma=0.5, eta=0.1)  # fmt: skip
    explicit = base.replace(train=TrainConfig(steps=10, optimizer="sgd"))
    adam = base.replace(train=TrainConfig(steps=10, optimizer="adam"))
    assert "optimizer" not in base.to_json()
    assert (explicit.run_id, explicit.shape_key) == (base.run_id, base.shape_key)
    assert adam.run_id != base.run_id and adam.shape_key != base.shape_key
    assert RunConfig.from_json(adam.to_json()) == adam
    assert adam.learning_rate == 0.1 and base.learning_rate == pytest.approx(3.2)


def test_an_unknown_optimizer_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"train\.optimizer.*sgd, adam"):
        TrainConfig(optimizer="rmsprop")
    from tasks.spec import SpecError, SweepSpec

    with pytest.raises(SpecError, match=r"train\.optimizer"):
        SweepSpec.from_dict({"name": "x", "train": {"optimizer": "lion"}, "grid": {"gamma": [1.0], "eta": [0.1]}})
    spec = SweepSpec.from_dict({"name": "x", "train": {"optimizer": "adam"}, "grid": {"gamma": [1.0], "eta": [0.1]}})
    assert spec.cells()[0].train.optimizer == "adam" and spec.to_dict()["train"]["optimizer"] == "adam"
    default = SweepSpec.from_dict({"name": "x", "grid": {"gamma": [1.0], "eta": [0.1]}})
    assert "optimizer" not in default.to_dict()["train"]


def test_the_launch_form_round_trips_the_optimizer_and_names_a_bad_one_at_its_field():
    from app.logic.launch import check_form, errors_by_field, spec_to_form

    form = spec_to_form({"name": "x", "train": {"optimizer": "adam"}, "grid": {"gamma": [1.0], "eta": [0.1]}})
    spec, errors = check_form(form)
    assert errors == [] and spec.train.optimizer == "adam"
    assert spec_to_form({"name": "x"})["train.optimizer"] == "sgd"  # a spec without it: the default
    spec, errors = check_form(form | {"train.optimizer": "lion"})
    assert spec is None and "sgd, adam" in errors_by_field(errors)["train.optimizer"][0]
