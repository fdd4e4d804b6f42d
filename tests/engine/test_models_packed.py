"""The MLP's fast path: θ and θ0 packed side by side (init_pair) must step exactly like ordinary,
separately allocated parameters and like autograd, and must really be taken by the trainer."""

import pytest
import torch

from engine.config import ModelConfig
from engine.ensemble import EnsembleModel
from engine.models import build_model

D64 = torch.float64


def _batch(gen, b=8, d=6, c=3):
    x = torch.randn(b, d, dtype=D64, generator=gen)
    label = torch.randint(0, c, (b,), generator=gen)
    return x, torch.nn.functional.one_hot(label, c).to(D64), label


@pytest.mark.parametrize("depth", [2, 4])
@pytest.mark.parametrize("act", ["relu", "tanh", "linear"])
@pytest.mark.parametrize("loss", ["mse", "xent"])
@pytest.mark.parametrize("centered", [True, False])
def test_packed_step_equals_autograd_on_separate_parameters(depth, act, loss, centered):
    model = build_model(ModelConfig(arch="mlp", width=12, depth=depth, activation=act), (6,), 3)
    seeds = [0, 1, 2]
    packed, packed0 = model.init_pair(seeds, dtype=D64)
    assert model._packed(packed, packed0) is not None  # the fast layout, not the fallback
    plain = model.init(seeds, dtype=D64)
    plain0 = {n: t.clone() for n, t in plain.items()}
    for n in plain:
        assert torch.equal(packed[n], plain[n]) and torch.equal(packed0[n], plain[n])
    gamma = torch.tensor([0.5, 1.0, 3.0], dtype=D64)
    step = torch.tensor([0.7, 0.0, 2.0], dtype=D64)  # member 1 frozen
    gen = torch.Generator().manual_seed(3)
    for _ in range(4):
        x, target, label = _batch(gen)
        l_fast = model.train_step(packed, packed0 if centered else None, x, target, label, gamma, step, loss)
        l_auto = EnsembleModel.train_step(
            model, plain, plain0 if centered else None, x, target, label, gamma, step, loss
        )
        torch.testing.assert_close(l_fast, l_auto)
    for n in plain:
        torch.testing.assert_close(packed[n], plain[n])
        assert torch.equal(packed0[n], plain0[n])  # θ0 is never written
        assert torch.equal(packed[n][1], plain0[n][1])  # the frozen member did not move
    assert not torch.equal(packed["w1"][0], packed0["w1"][0])
    assert not torch.equal(packed[f"b{depth}"][2], packed0[f"b{depth}"][2])  # biases train too


def test_centered_output_is_exactly_zero_at_init_on_the_packed_path():
    model = build_model(ModelConfig(arch="mlp", width=32, depth=3), (6,), 3)
    params, params0 = model.init_pair([4, 5], dtype=torch.float32)
    x, target, label = _batch(torch.Generator().manual_seed(0))
    losses = model.train_step(params, params0, x.float(), target.float(), label, torch.ones(2), torch.zeros(2))
    # θ and θ0 ran through the same batched GEMMs: their readouts agree bit for bit, so f = 0
    # exactly and the loss is the mean of the one-hot targets squared, 1/C
    g = model._buffer_cache[1]["g"]  # (K + U, C, B) readouts of the step
    assert g.shape[0] == 4 and torch.equal(g[:2], g[2:])
    assert torch.equal(losses, torch.full((2,), 1.0 / 3))


def test_views_stay_tied_to_the_packed_storage_after_in_place_resets():
    # the trainer resets diverged members with params[n][idx] = params0[n][idx]; that must write
    # through the views into the packed tensor the fast step reads
    model = build_model(ModelConfig(arch="mlp", width=8, depth=3), (6,), 3)
    params, params0 = model.init_pair([0, 1], dtype=D64)
    gen = torch.Generator().manual_seed(1)
    x, target, label = _batch(gen)
    model.train_step(params, params0, x, target, label, torch.ones(2, dtype=D64), torch.full((2,), 5.0, dtype=D64))
    dead = torch.tensor([1])
    for n in params:
        params[n][dead] = params0[n][dead]
    assert model._packed(params, params0) is not None
    losses = model.train_step(params, params0, x, target, label, torch.ones(2, dtype=D64), torch.zeros(2, dtype=D64))
    assert losses[1].item() == pytest.approx(1.0 / 3, abs=1e-15)  # member 1 is back at θ0: f = 0
    assert losses[0].item() != pytest.approx(1.0 / 3)


def test_parameters_from_elsewhere_take_the_fallback_and_are_written_back():
    model = build_model(ModelConfig(arch="mlp", width=8, depth=3), (6,), 3)
    params, params0 = model.init_pair([0, 1], dtype=D64)
    copies = {n: t.clone() for n, t in params.items()}  # ordinary contiguous tensors
    assert model._packed(copies, params0) is None
    x, target, label = _batch(torch.Generator().manual_seed(2))
    gamma, step = torch.ones(2, dtype=D64), torch.full((2,), 2.0, dtype=D64)
    l_copy = model.train_step(copies, params0, x, target, label, gamma, step)
    l_pack = model.train_step(params, params0, x, target, label, gamma, step)
    torch.testing.assert_close(l_copy, l_pack)
    for n in params:
        torch.testing.assert_close(copies[n], params[n])


def test_members_sharing_a_seed_share_one_centering_forward():
    # θ0 depends only on the seed: a 2-seed grid needs 2 θ0 slots, and every member is centered by
    # its own seed's θ0 — the same losses and parameters as with one θ0 per member (the fallback)
    model = build_model(ModelConfig(arch="mlp", width=10, depth=3), (6,), 3)
    seeds = [3, 7, 3, 7, 3]
    params, params0 = model.init_pair(seeds, dtype=D64)
    found = model._packed(params, params0)
    assert found is not None and found[0][0].shape[0] == 5 + 2 and found[1].tolist() == [0, 1, 0, 1, 0]
    for name in model.weight_names:  # θ0 per member for the rest of the engine
        assert torch.equal(params0[name][2], params0[name][0])
        assert not torch.equal(params0[name][1], params0[name][0])
    separate = {n: t.clone() for n, t in params.items()}
    separate0 = {n: t.clone() for n, t in params0.items()}
    gamma = torch.tensor([0.3, 1.0, 2.0, 5.0, 0.7], dtype=D64)
    step = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5], dtype=D64)
    gen = torch.Generator().manual_seed(4)
    for _ in range(3):
        x, target, label = _batch(gen)
        l_shared = model.train_step(params, params0, x, target, label, gamma, step)
        l_separate = model.train_step(separate, separate0, x, target, label, gamma, step)
        torch.testing.assert_close(l_shared, l_separate, rtol=0, atol=1e-14)
    for n in params:
        torch.testing.assert_close(params[n], separate[n], rtol=0, atol=1e-13)


def test_reset_members_clears_a_blown_up_member_completely():
    # a member driven to inf/NaN mid-step leaves 0·inf = NaN in the packed padding too;
    # reset_members must bring it back to a finite θ0 (f = 0 again), leaving the other member alone
    model = build_model(ModelConfig(arch="mlp", width=8, depth=3), (6,), 3)
    params, params0 = model.init_pair([0, 1], dtype=torch.float32)
    gen = torch.Generator().manual_seed(5)
    gamma = torch.ones(2)
    for _ in range(6):
        x, target, label = (t.float() if t.is_floating_point() else t for t in _batch(gen))
        model.train_step(params, params0, x, target, label, gamma, torch.tensor([1e30, 0.1]))
    found = model._packed(params, params0)
    assert found is not None
    assert not torch.isfinite(found[0][1][0, :, 9:]).all()  # NaN reached member 0's padding
    keep = {n: t[1].clone() for n, t in params.items()}
    model.reset_members(params, params0, torch.tensor([0]))
    x, target, label = (t.float() if t.is_floating_point() else t for t in _batch(gen))
    losses = model.train_step(params, params0, x, target, label, gamma, torch.zeros(2))
    assert losses[0].item() == pytest.approx(1.0 / 3, rel=1e-6)
    for n in params:
        assert torch.equal(params[n][1], keep[n])
