"""Batched Adam for the μP-γ ensembles (`train.optimizer = "adam"`; design.md §2, "Adam").

Every member has its own Adam state (first moment m, second moment v, step count), stacked on the
member axis K like the parameters, so the ensemble equals K separate torch.optim.Adam runs
(tests/engine/test_optim_adam.py). Gradients come from autograd over `EnsembleModel.output`, for
every architecture (the MLP's hand-written backward is the SGD path); the MLP's parameters are
views into its packed buffers and are updated in place, so its layout stays valid.

The per-layer rate, η × `layer_rates`, is what the parameterization asks of an update whose size
does not depend on the gradient's (Adam's step is ~ sign(gradient) once m and v settle):

    hidden / input weight, h = W a / sqrt(fan_in), W ~ N(0, 1):  rate η / sqrt(fan_in)
        a step of size s on every entry, coherent with a (the gradient is δh ⊗ a), moves h by
        ~ s · fan_in / sqrt(fan_in) = s · sqrt(fan_in): s = η / sqrt(fan_in) moves h by O(η) at any
        width (convolutions: fan_in = C_in, as in their multiplier; the k² taps are a constant)
    readout, f = W_L a / (fan_in · γ):                           rate η
        the same coherent step moves f by ~ s · fan_in / (fan_in · γ) = s / γ: s = η is O(η/γ) at
        any width, as SGD's first step is (its N·η step and the 1/(N·γ) gradient)
    bias: its layer's rate (the bias sits inside that layer's multiplier, as in the authors' code;
        SGD moves it 1/fan_in less than the weights, and so does this rule)
    'e' parameters (the ViT's positions, added to h without a multiplier): rate η

This is Tensor Programs V's μP Adam table (Yang et al. 2022: hidden weights Adam LR 1/fan_in,
input weights and the output layer's Θ(1) entries scaled so the output moves Θ(1)) rewritten for
weights kept at N(0, 1) under a 1/sqrt(fan_in) multiplier: an Adam rate r on W_eff = W / sqrt(fan_in)
is a rate r · sqrt(fan_in) on W, hence 1/sqrt(fan_in) for hidden layers; the readout's 1/fan_in
multiplier turns TP5's 1/fan_in output rate into a rate Θ(1) on W_L. tests/engine/test_optim_adam.py
checks it by coordinates: the first step moves the hidden pre-activations and f by the same amount
at widths 64, 128 and 256.

β1 = 0.9, β2 = 0.999 (Adam's defaults). ε is relative: ε = 1e-8 × the gradient's scale at
init for that layer and member, rate_l / (F · γ_k) with F the readout's fan_in. The gradient of
every layer is ∝ 1/γ (f = g/γ) and shrinks with width (1/(F·γ) at the readout, 1/(F^1.5·γ) for a
hidden layer): a fixed ε = 1e-8 is comparable to the hidden gradients already at N = 1024, γ = 10³
and would turn rich-side Adam into slow SGD, while the relative one stays 1e-8 of the gradient at
every γ and width (and above float32's smallest normal number at the sweeps' γ and N).

Frozen members (step rate 0: diverged, cancelled, or padding after compaction) are not updated:
their m, v, step count and parameters are kept with `torch.where`, so a NaN gradient never reaches
them. `AdamState.select` follows the trainer's compaction, `AdamState.reset` its reset of diverged
members to θ0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.ensemble import EnsembleModel, Params, _expand

BETA1 = 0.9
BETA2 = 0.999
EPS_RELATIVE = 1e-8  # ε as a fraction of the layer's gradient scale at init (module docstring)


def layer_rates(model: EnsembleModel) -> dict[str, float]:
    """Per parameter: the factor of η in its Adam rate (module docstring). Weights: 1/sqrt(fan_in)
    (fan_in = shape[1], the input channels of a convolution), the readout (the last weight): 1;
    a bias: its weight's; 'e' parameters: 1."""
    readout = model.weight_names[-1]
    rates: dict[str, float] = {}
    current = 1.0
    for name, (shape, kind) in model.specs.items():  # layer order: a bias follows its weight
        if kind == "w":
            current = 1.0 if name == readout else 1.0 / math.sqrt(shape[1])
            rates[name] = current
        elif kind == "b":
            rates[name] = current
        else:
            rates[name] = 1.0
    return rates


def gradient_scales(model: EnsembleModel) -> dict[str, float]:
    """Per parameter: its gradient's scale at init, divided by 1/γ: rate / F (F = the readout's fan_in)."""
    readout_fan_in = model.specs[model.weight_names[-1]][0][1]
    return {name: rate / readout_fan_in for name, rate in layer_rates(model).items()}


@dataclass
class AdamState:
    """Per-member Adam state: m and v shaped like the parameters (K, ...), steps (K,) taken so far."""

    m: Params
    v: Params
    steps: Tensor  # (K,) in the run's dtype
    rates: dict[str, float]
    grad_scales: dict[str, float]

    @classmethod
    def zeros(cls, model: EnsembleModel, params: Params) -> AdamState:
        """Fresh state for these parameters, in their dtype and on their device."""
        first = next(iter(params.values()))
        return cls(
            m={n: torch.zeros(p.shape, dtype=p.dtype, device=p.device) for n, p in params.items()},
            v={n: torch.zeros(p.shape, dtype=p.dtype, device=p.device) for n, p in params.items()},
            steps=torch.zeros(first.shape[0], dtype=first.dtype, device=first.device),
            rates=layer_rates(model),
            grad_scales=gradient_scales(model),
        )

    def select(self, keep: Tensor) -> AdamState:
        """The state of the members at positions `keep` (J,): follows EnsembleModel.select_members."""
        return AdamState({n: t[keep] for n, t in self.m.items()}, {n: t[keep] for n, t in self.v.items()},
                         self.steps[keep], self.rates, self.grad_scales)  # fmt: skip

    def reset(self, members: Tensor) -> None:
        """Back to a fresh state for these members (J,), in place: a diverged member holds no NaN."""
        for t in (*self.m.values(), *self.v.values()):
            t[members] = 0
        self.steps[members] = 0


def adam_step(
    model: EnsembleModel,
    state: AdamState,
    params: Params,
    params0: Params | None,
    x: Tensor,
    target: Tensor,
    label: Tensor,
    gamma: Tensor,
    eta: Tensor,
    loss: str = "mse",
) -> Tensor:
    """One in-place Adam step for every member; returns the losses (K,) *before* the update.

    eta (K,) is each member's base rate η, 0 for frozen members (nothing of theirs changes). The
    update of parameter n is torch.optim.Adam's with lr = η · rates[n] and
    eps = EPS_RELATIVE · grad_scales[n] / γ."""
    losses, grads = model.losses_and_grads(params, params0, x, target, label, gamma, loss)
    with torch.no_grad():
        active = eta > 0  # (K,)
        steps = torch.where(active, state.steps + 1, state.steps)
        # frozen members may have 0 steps: their corrections are 0 and their update is masked out
        correction1 = 1 - BETA1**steps  # (K,)
        correction2_sqrt = (1 - BETA2**steps).sqrt()
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        for (name, p), g in zip(params.items(), grads, strict=True):
            on = _expand(active, g)
            m = torch.where(on, torch.lerp(state.m[name], g, 1 - BETA1), state.m[name])
            v = torch.where(on, torch.addcmul(state.v[name] * BETA2, g, g, value=1 - BETA2), state.v[name])
            state.m[name], state.v[name] = m, v
            eps = EPS_RELATIVE * state.grad_scales[name] / gamma  # (K,)
            denom = v.sqrt() / _expand(correction2_sqrt, v) + _expand(eps, v)
            step = m / denom * _expand(eta * state.rates[name] / correction1, m)
            p.sub_(torch.where(on, step, zero))  # in place: the MLP's parameters are views of its packed buffers
        state.steps = steps
    return losses
