"""engine.mlp.MLP.hvp_operator, the hand-written Hessian-vector product the sharpness runs on, against
double backward through the trainer's own probe loss (engine.metrics.autograd_hvp), float64: every
activation, both losses, depth 2–4, centered (θ0's readout subtracted) and not, γ per member."""

import pytest
import torch

from engine import metrics as M
from engine.config import ModelConfig
from engine.mlp import MLP
from engine.trainer import _output


@pytest.mark.parametrize("act", ["relu", "tanh", "linear"])
@pytest.mark.parametrize("loss", ["mse", "xent"])
@pytest.mark.parametrize("depth", [2, 3, 4])
def test_hand_written_hvp_is_double_backward(act, loss, depth):
    gen = torch.Generator().manual_seed(depth)
    model = MLP(ModelConfig(arch="mlp", width=16, depth=depth, activation=act), (7,), 3)
    seeds = [0, 1, 2]
    base = model.init(seeds, dtype=torch.float64)
    # away from init, so that every term of the product (φ'' for tanh, the residual's) is present
    params = {n: p + 0.3 * torch.randn(p.shape, dtype=p.dtype, generator=gen) for n, p in base.items()}
    x = torch.randn(11, 7, dtype=torch.float64, generator=gen)
    label = torch.randint(0, 3, (11,), generator=gen)
    target = torch.nn.functional.one_hot(label, 3).double()
    gamma = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)
    for g0 in (None, model.raw(base, x)[0]):

        def probe_loss(p, g0=g0):
            return M.loss_fn(loss, _output(model, p, g0, x, gamma), target, label)

        reference = M.autograd_hvp(probe_loss, params)
        hand = model.hvp_operator(params, x, g0, gamma, loss, target, label)
        for _ in range(2):  # the operator serves several products
            v = {n: torch.randn(p.shape, dtype=p.dtype, generator=gen) for n, p in params.items()}
            want, got = reference(v), hand(v)
            assert list(got) == list(params)
            for n in params:
                assert got[n].shape == params[n].shape
                torch.testing.assert_close(got[n], want[n], rtol=1e-10, atol=1e-12 * want[n].abs().max().item())
