"""μP-γ models: seeds, centering, the batched MLP path against the plain one, μP coordinate sizes."""

import math

import pytest
import torch

from engine import metrics as M
from engine.config import ConfigError, ModelConfig
from engine.ensemble import EnsembleModel
from engine.models import build_model

D64 = torch.float64

CASES = {
    "mlp": (ModelConfig(arch="mlp", width=16, depth=3), (10,)),
    "cnn": (ModelConfig(arch="cnn", width=4, depth=4), (2, 8, 8)),
    "resnet": (ModelConfig(arch="resnet", width=4, depth=3), (2, 8, 8)),
    "vit": (ModelConfig(arch="vit", width=8, depth=2, patch=4, heads=2), (2, 8, 8)),
}


@pytest.mark.parametrize("arch", list(CASES))
def test_member_k_is_the_single_run_with_seed_k_and_centering_is_exactly_zero(arch):
    cfg, shape = CASES[arch]
    model = build_model(cfg, shape, 3)
    params = model.init([5, 7, 9], dtype=D64)
    single = model.init([7], dtype=D64)
    for name in params:
        assert torch.equal(params[name][1], single[name][0])
    assert not torch.equal(params[model.weight_names[0]][0], params[model.weight_names[0]][1])
    x = torch.randn(6, *shape, dtype=D64)
    gamma = torch.tensor([0.1, 1.0, 10.0], dtype=D64)
    params0 = {n: p.clone() for n, p in params.items()}
    out = model.output(params, params0, x, gamma)
    assert out.shape == (3, 6, 3)
    assert torch.count_nonzero(out) == 0
    # uncentered output is not zero, and scales as 1/γ
    raw = model.output(params, None, x, gamma)
    assert raw.abs().max() > 0
    torch.testing.assert_close(model.output(params, None, x, torch.ones(3, dtype=D64)) / gamma.view(3, 1, 1), raw)


@pytest.mark.parametrize("arch", list(CASES))
def test_batched_forward_equals_per_member_plain_forward(arch):
    cfg, shape = CASES[arch]
    model = build_model(cfg, shape, 3)
    params = model.init([1, 2], dtype=D64)
    x = torch.randn(5, *shape, dtype=D64)
    g, feats = model.raw(params, x)
    for k in range(2):
        gk, fk, _ = model.forward_one({n: p[k] for n, p in params.items()}, x)
        torch.testing.assert_close(g[k], gk)
        torch.testing.assert_close(feats[k], fk)


def test_readout_and_hidden_scaling_rules():
    # depth-2 MLP: f = W2 φ(W1 x / sqrt(D)) / (N γ): check against the formula written out
    model = build_model(ModelConfig(arch="mlp", width=7, depth=2, activation="tanh"), (4,), 2)
    p = model.init([3], dtype=D64)
    x = torch.randn(5, 4, dtype=D64)
    expected = torch.tanh(x @ p["w1"][0].T / 2.0) @ p["w2"][0].T / (7 * 0.5)
    torch.testing.assert_close(model.output(p, None, x, torch.tensor([0.5], dtype=D64))[0], expected)


def test_conv_is_divided_by_sqrt_channels_not_kernel_size():
    model = build_model(ModelConfig(arch="cnn", width=3, depth=4), (2, 4, 4), 2)
    p = {n: t[0] for n, t in model.init([0], dtype=D64).items()}
    x = torch.randn(1, 2, 4, 4, dtype=D64)
    h1 = model.forward_one(p, x)[2][0]
    ref = torch.nn.functional.conv2d(x, p["conv1"], padding=1) / math.sqrt(2)
    torch.testing.assert_close(h1, ref)


def _autograd_step(model, params, params0, x, target, label, gamma, step, loss):
    return EnsembleModel.train_step(model, params, params0, x, target, label, gamma, step, loss)


@pytest.mark.parametrize("act", ["relu", "tanh", "linear"])
@pytest.mark.parametrize("loss", ["mse", "xent"])
def test_mlp_hand_backward_equals_autograd(act, loss):
    model = build_model(ModelConfig(arch="mlp", width=12, depth=4, activation=act), (6,), 3)
    p_hand = model.init([0, 1, 2], dtype=D64)
    p_auto = {n: t.clone() for n, t in p_hand.items()}
    p0 = {n: t.clone() for n, t in p_hand.items()}
    gamma = torch.tensor([0.5, 1.0, 3.0], dtype=D64)
    step = torch.tensor([0.7, 0.0, 2.0], dtype=D64)  # member 1 frozen
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(8, 6, dtype=D64, generator=gen)
        label = torch.randint(0, 3, (8,), generator=gen)
        target = torch.nn.functional.one_hot(label, 3).to(D64)
        l1 = model.train_step(p_hand, p0, x, target, label, gamma, step, loss)
        l2 = _autograd_step(model, p_auto, p0, x, target, label, gamma, step, loss)
        torch.testing.assert_close(l1, l2)
    for n in p_hand:
        torch.testing.assert_close(p_hand[n], p_auto[n])
        torch.testing.assert_close(p_hand[n][1], p0[n][1])  # the frozen member did not move
    assert not torch.equal(p_hand["w1"][0], p0["w1"][0])


def test_frozen_member_with_nan_parameters_leaves_others_untouched():
    model = build_model(ModelConfig(arch="mlp", width=8, depth=3), (4,), 2)
    p = model.init([0, 1], dtype=D64)
    ref = {n: t[1:].clone() for n, t in p.items()}
    for t in p.values():
        t[0] = float("nan")
    x = torch.randn(5, 4, dtype=D64)
    y = torch.randn(5, 2, dtype=D64)
    lab = y.argmax(1)
    gamma = torch.ones(2, dtype=D64)
    losses = model.train_step(p, None, x, y, lab, gamma, torch.tensor([0.0, 1.0], dtype=D64))
    ref_loss = model.train_step(ref, None, x, y, lab, gamma[1:], torch.tensor([1.0], dtype=D64))
    assert torch.isnan(losses[0])
    torch.testing.assert_close(losses[1:], ref_loss)
    for n in p:
        torch.testing.assert_close(p[n][1:], ref[n])


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_mlp_closed_form_ntk_equals_jacobian_ntk(act):
    model = build_model(ModelConfig(arch="mlp", width=10, depth=3, activation=act), (5,), 3)
    params = model.init([0, 1], dtype=D64)
    gamma = torch.tensor([0.5, 2.0], dtype=D64)
    x = torch.randn(7, 5, dtype=D64)
    fast = model.ntk(params, x, gamma)

    def fn(p, xs):
        return model.forward_one(p, xs)[0] / g_now

    slow = []
    for k in range(2):
        g_now = gamma[k]
        slow.append(M.empirical_ntk(fn, {n: t[k : k + 1] for n, t in params.items()}, x))
    torch.testing.assert_close(fast, torch.cat(slow))


def test_ntk_scales_as_one_over_gamma_squared():
    model = build_model(ModelConfig(arch="mlp", width=10, depth=3), (5,), 2)
    params = model.init([0, 0], dtype=D64)
    x = torch.randn(4, 5, dtype=D64)
    ntk = model.ntk(params, x, torch.tensor([1.0, 0.1], dtype=D64))
    torch.testing.assert_close(ntk[1], 100 * ntk[0])


@pytest.mark.parametrize("arch", ["mlp", pytest.param("cnn", marks=pytest.mark.slow)])
def test_mup_coordinate_sizes_stay_bounded_across_widths(arch):
    # coord check (microsoft/mup): after a few SGD steps at fixed η, γ the RMS of every hidden
    # pre-activation and of the output change must not grow or shrink with width.
    shape = (8,) if arch == "mlp" else (1, 8, 8)
    widths = [64, 256, 1024] if arch == "mlp" else [8, 16, 32]
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(16, *shape, dtype=D64, generator=gen) for _ in range(4)]
    ys = [torch.randn(16, 2, dtype=D64, generator=gen) for _ in range(4)]
    sizes = []
    for n in widths:
        cfg = ModelConfig(arch=arch, width=n, depth=3 if arch == "mlp" else 4)
        model = build_model(cfg, shape, 2)
        params = model.init([0, 1], dtype=D64)
        p0 = {k: t.clone() for k, t in params.items()}
        gamma = torch.ones(2, dtype=D64)
        step = torch.full((2,), n * 0.05, dtype=D64)  # N·η
        for x, y in zip(xs, ys, strict=True):
            model.train_step(params, p0, x, y, y.argmax(1), gamma, step)
        hs = model.preactivations(params, xs[0])
        f = model.output(params, p0, xs[0], gamma)
        sizes.append([h.pow(2).mean().sqrt().item() for h in hs] + [f.pow(2).mean().sqrt().item()])
    sizes_t = torch.tensor(sizes)  # (widths, layers+1)
    ratio = sizes_t.max(0).values / sizes_t.min(0).values
    assert (ratio < 2.0).all(), f"coordinate sizes vary with width: {sizes}"
    assert (sizes_t[:, -1] > 1e-3).all()  # the output actually moved (features learn, not frozen)


def test_bad_shapes_name_the_field():
    with pytest.raises(ConfigError) as e:
        build_model(ModelConfig(arch="vit", width=8, patch=3, heads=2), (1, 8, 8), 2)
    assert e.value.field == "model.patch"
    with pytest.raises(ConfigError) as e:
        build_model(ModelConfig(arch="cnn", width=4, depth=4), (16,), 2)
    assert e.value.field == "model.arch"
