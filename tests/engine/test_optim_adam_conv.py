"""train.optimizer = "adam" on the ResNet and the ViT (engine/optim.py): the batched Adam equals
torch.optim.Adam run member by member, the per-layer rates follow the multipliers (written out by
hand here, not read from engine.optim), and compaction changes no recorded value.
The MLP and CNN cases, and the helpers reused here, are in tests/engine/test_optim_adam.py."""

import math

import pytest
import torch

from engine.config import ModelConfig
from engine.models import build_model
from engine.optim import layer_rates
from tests.engine.test_optim_adam import (
    D64,
    adam_configs,
    assert_compaction_changes_nothing,
    batched_params,
    reference_params,
)
from tests.engine.test_trainer_ensemble import SHAPES

# depth 3 for the ResNet: its third block starts a stage (stride 2, 2N channels, a 1×1 projection),
# the layer depth 2 does not have; the ViT's depth 2 is the smallest the config allows
MODELS = {
    "resnet": ModelConfig(arch="resnet", width=4, depth=3),
    "vit": ModelConfig(arch="vit", width=8, depth=2, patch=2, heads=2),
}
# (γ, η, seed): lazy, middle, rich; the ViT's compaction test cancels one of four members, since a
# ViT ensemble is compacted to no fewer than two (ViT.min_members)
CELLS = [(0.05, 0.02, 0), (1.0, 0.1, 1), (20.0, 0.3, 2), (5.0, 0.05, 3)]
STEPS = 6


def configs_of(arch, cells=CELLS, steps=STEPS):
    return adam_configs(arch, cells, steps=steps, model=MODELS[arch])


@pytest.mark.parametrize("arch", ["resnet", "vit"])
def test_batched_adam_equals_torch_adam_member_by_member(arch):
    configs = configs_of(arch)
    _, params, _, _, losses = batched_params(configs, SHAPES[arch], STEPS)
    init = build_model(MODELS[arch], SHAPES[arch], 3).init([c.seed for c in configs], dtype=D64)
    for k, cfg in enumerate(configs):
        ref, ref_losses = reference_params(cfg, SHAPES[arch], STEPS)
        assert all(math.isfinite(v) for v in ref_losses) and ref_losses[-1] != ref_losses[0]
        torch.testing.assert_close(losses[:, k], torch.tensor(ref_losses, dtype=D64), rtol=1e-10, atol=1e-12)
        for name, p in ref.items():
            mine = params[name][k]
            if name.endswith(".qkv_b"):
                mine, p = _key_bias_apart(name, mine, p, cfg.model.width)
            torch.testing.assert_close(mine, p, rtol=1e-10, atol=1e-12, msg=f"{arch} {name} member {k}")
            assert not torch.equal(params[name][k], init[name][k]), f"{arch} {name} member {k} did not move"


def _key_bias_apart(name, batched, reference, width):
    """The ViT's key bias (qkv_b[N:2N]) has no gradient in exact arithmetic: it adds q·b to every score
    of a query, and the softmax ignores a shift. Its computed gradient is rounding noise (1e-22 to
    1e-18 here), which the batched kernels and the single-member ones round differently, and Adam
    divides it by sqrt(v) + ε: both paths move it by up to 3e-10, not by the same amounts. It must
    stay below 1e-7, 4 orders under a real step (η · rate ≥ 7e-3 here); the query and value biases
    go on to the 1e-10 comparison."""
    key = slice(width, 2 * width)
    for side in (batched, reference):
        assert side[key].abs().max() < 1e-7, f"{name}: the key bias moved {side[key].abs().max():.1e}"
    rest = torch.cat([batched[:width], batched[2 * width :]]), torch.cat([reference[:width], reference[2 * width :]])
    return rest


def test_resnet_adam_rates_follow_the_multipliers():
    """η / sqrt(C_in) for every convolution (stem, both convs of a block, the 1×1 projection), η at
    the readout, a bias at its weight's rate. Width 4 on one input channel: C_in is 1, 4 or 8."""
    rates = layer_rates(build_model(MODELS["resnet"], SHAPES["resnet"], 3))
    expected = {"stem": 1.0, "readout": 1.0, "block3.conv2": 1 / math.sqrt(8)}
    expected |= {f"block{i}.conv{j}": 1 / 2 for i in (1, 2) for j in (1, 2)}
    expected |= {"block3.conv1": 1 / 2, "block3.proj": 1 / 2}  # their input is block2's N = 4 channels
    expected |= {f"{name}_b": rate for name, rate in expected.items()}
    assert rates == pytest.approx(expected)


def test_vit_adam_rates_follow_the_multipliers():
    """η / sqrt(fan_in) for the patch embedding (C·p² = 4), qkv, proj, fc1 (N = 8) and fc2 (2N = 16),
    η for the position embedding (added without a multiplier) and the readout, a bias at its weight's."""
    rates = layer_rates(build_model(MODELS["vit"], SHAPES["vit"], 3))
    expected = {"embed": 1 / 2, "readout": 1.0}
    for block in ("block1", "block2"):
        expected |= {f"{block}.{name}": 1 / math.sqrt(8) for name in ("qkv", "proj", "fc1")}
        expected[f"{block}.fc2"] = 1 / 4
    expected |= {f"{name}_b": rate for name, rate in expected.items()}
    expected["pos"] = 1.0
    assert rates == pytest.approx(expected)


@pytest.mark.parametrize("arch", ["resnet", "vit"])
def test_compaction_keeps_the_survivors_losses_under_adam(arch, monkeypatch):
    """A per-run cancel of member 1 at the second flush: the ensemble shrinks (seen from adam_step's
    parameters) and every recorded point equals the run that keeps the cancelled member in."""
    import engine.trainer

    sizes: list[int] = []
    original = engine.trainer.adam_step

    def spy(model, state, params, *args, **kwargs):
        sizes.append(next(iter(params.values())).shape[0])
        return original(model, state, params, *args, **kwargs)

    monkeypatch.setattr(engine.trainer, "adam_step", spy)
    assert_compaction_changes_nothing(configs_of(arch, steps=9), SHAPES[arch])
    assert sizes[:9] == [4] * 6 + [3] * 3 and sizes[9:] == [4] * 9  # compacted after the cancel; then not
