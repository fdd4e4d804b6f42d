"""The μP coordinate check (microsoft/mup) for ResNet (its residual branch scale) and ViT (its
attention scale), as tests/engine/test_models_param.py does it for the MLP and the CNN: after a few
SGD steps at fixed γ and η, the RMS of every hidden pre-activation and of the output must neither
grow nor shrink with the width. A wrong scale (a branch not divided as the parameterization says, a
1/√d where 1/d is meant) makes some coordinate drift by a factor of the width ratio.
"""

from __future__ import annotations

import pytest
import torch

from engine.config import ModelConfig
from engine.models import build_model

D64 = torch.float64
SHAPE = (1, 8, 8)  # one-channel 8x8 images


def coordinate_sizes(configs: list[ModelConfig], eta: float, steps: int = 4) -> torch.Tensor:
    """(widths, layers + 1): RMS of each pre-activation and of the output after `steps` SGD steps of
    two members (seeds 0, 1) at γ = 1 and step N·η on fixed random batches."""
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(16, *SHAPE, dtype=D64, generator=gen) for _ in range(steps)]
    ys = [torch.randn(16, 2, dtype=D64, generator=gen) for _ in range(steps)]
    sizes = []
    for cfg in configs:
        model = build_model(cfg, SHAPE, 2)
        params = model.init([0, 1], dtype=D64)
        p0 = {k: t.clone() for k, t in params.items()}
        gamma = torch.ones(2, dtype=D64)
        lr = torch.full((2,), cfg.width * eta, dtype=D64)
        for x, y in zip(xs, ys, strict=True):
            model.train_step(params, p0, x, y, y.argmax(1), gamma, lr)
        hs = model.preactivations(params, xs[0])
        f = model.output(params, p0, xs[0], gamma)
        sizes.append([h.pow(2).mean().sqrt().item() for h in hs] + [f.pow(2).mean().sqrt().item()])
    return torch.tensor(sizes)


def assert_width_independent(sizes: torch.Tensor) -> None:
    ratio = sizes.max(0).values / sizes.min(0).values
    assert torch.isfinite(sizes).all(), f"a coordinate diverged: {sizes.tolist()}"
    assert (ratio < 2.0).all(), f"coordinate sizes vary with width: {sizes.tolist()}"
    assert (sizes[:, -1] > 1e-3).all()  # the output moved: the features learn


@pytest.mark.slow
def test_resnet_coordinates_stay_bounded_across_widths() -> None:
    # N·η with η = 5e-4: at the MLP's 0.05 a width-16 ResNet leaves the stable range within 4 steps
    configs = [ModelConfig(arch="resnet", width=n, depth=2) for n in (16, 32, 64)]
    assert_width_independent(coordinate_sizes(configs, eta=5e-4))


def test_vit_coordinates_stay_bounded_across_widths() -> None:
    configs = [ModelConfig(arch="vit", width=n, depth=2, patch=4, heads=2) for n in (16, 32, 64)]
    assert_width_independent(coordinate_sizes(configs, eta=0.05))
