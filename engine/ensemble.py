"""The μP-γ scale rule and the ensemble base every architecture subclasses (design.md §2).

Every parameter of a K-member ensemble is one tensor with a leading K axis, so one forward call
computes all members. Rules (N = width, fan_in = inputs of the layer), written once below as `dense`,
`readout`, `conv` (and `layer_scales` for the MLP's batched path):

    hidden   h_{l+1} = (W_l φ(h_l) + b_l) / sqrt(fan_in)       W ~ N(0, 1), b = 0
    conv     the same with fan_in = C_in (not C_in·k²)
    readout  f = (W_L φ(h_L) + b_L) / (fan_in · γ)
    centered f(x) = f_θ(x) − f_θ0(x), θ0 a frozen copy: the output is exactly 0 at init

Member k is initialized from its own seed exactly as a single run with that seed would be
(a float64 CPU generator, then cast), so an ensemble equals K separate runs.

`EnsembleModel` batches one member's `forward_one` with torch.func.vmap (grouped convolutions
underneath); its SGD step uses autograd on the sum of member losses (members are independent, so each
gets its own gradient). `select_members` gathers some members into a smaller ensemble laid out as
`init_pair` lays it out: the trainer drops diverged and cancelled members that way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.config import ConfigError, ModelConfig
from engine.metrics import autograd_hvp, loss_fn

Params = dict[str, Tensor]


def activation(name: str, h: Tensor) -> Tensor:
    if name == "relu":
        return torch.relu(h)
    if name == "tanh":
        return torch.tanh(h)
    if name == "linear":
        return h
    raise ConfigError("model.activation", f"must be one of relu, tanh, linear (got {name!r})")


def _expand(v: Tensor, like: Tensor) -> Tensor:
    """A per-member (K,) vector shaped to broadcast against a (K, ...) tensor."""
    return v.view(-1, *([1] * (like.dim() - 1)))


# -- the μP scale rule, once (every layer of every architecture goes through one of these)


def dense(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """A μP hidden layer: (x Wᵀ + b) / sqrt(fan_in). x (..., fan_in), w (out, fan_in) → (..., out)."""
    return (x @ w.T + b) / math.sqrt(w.shape[1])


def readout(feats: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """The μP readout without its 1/γ (applied where f is formed): (φ Wᵀ + b) / fan_in.
    feats (B, F), w (C, F) → (B, C)."""
    return (feats @ w.T + b) / w.shape[1]


def conv(x: Tensor, w: Tensor, b: Tensor, stride: int = 1) -> Tensor:
    """μP conv: divide by sqrt(C_in), not sqrt(C_in·k²). x (B, C_in, H, W) → (B, C_out, H', W')."""
    pad = w.shape[-1] // 2
    return F.conv2d(x, w, b, stride=stride, padding=pad) / math.sqrt(w.shape[1])


def layer_scales(dims: Sequence[int]) -> list[float]:
    """dense's and readout's divisors as multipliers for a layer stack dims [D, N, …, N, C] (the MLP's
    batched path folds them into its GEMMs' alpha): 1/sqrt(fan_in) per hidden layer, 1/fan_in last."""
    depth = len(dims) - 1
    return [1.0 / math.sqrt(dims[i]) for i in range(depth - 1)] + [1.0 / dims[depth - 1]]


class EnsembleModel:
    """A μP-γ network whose parameters are stacked along a leading member axis K.

    Subclasses define `specs` (name → per-member shape, in layer order; 'w'-kind entries are weight
    layers, counted by `weight_names` for movement_l1..movement_lL) and `forward_one`, one member's
    raw network: x (B, *input_shape) → (readout g (B, C) without the 1/γ, features (B, F),
    hidden pre-activations [(B, ...)]).
    """

    def __init__(self, model: ModelConfig, input_shape: Sequence[int], n_outputs: int):
        self.config = model
        self.input_shape = tuple(int(s) for s in input_shape)
        self.n_outputs = int(n_outputs)
        self.act = model.activation
        # name -> (shape, kind) with kind 'w' (N(0,1) weight layer), 'b' (zero bias), 'e' (N(0,1), not a layer)
        self.specs: dict[str, tuple[tuple[int, ...], str]] = {}
        # the fewest members an ensemble is compacted to (select_members): see ViT
        self.min_members = 1

    # -- parameters

    @property
    def weight_names(self) -> list[str]:
        return [n for n, (_, kind) in self.specs.items() if kind == "w"]

    def init(
        self, seeds: Sequence[int], dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> Params:
        """Stacked parameters (K, ...) for members with these seeds. Member k depends only on seeds[k]."""
        per_member: list[Params] = []
        for seed in seeds:
            gen = torch.Generator().manual_seed(int(seed))
            p: Params = {}
            for name, (shape, kind) in self.specs.items():
                if kind == "b":
                    p[name] = torch.zeros(shape, dtype=torch.float64)
                else:
                    p[name] = torch.randn(shape, generator=gen, dtype=torch.float64)
            per_member.append(p)
        return {
            name: torch.stack([p[name] for p in per_member]).to(device=device, dtype=dtype).contiguous()
            for name in self.specs
        }

    def init_pair(
        self, seeds: Sequence[int], dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> tuple[Params, Params]:
        """(θ, θ0): init(seeds) and a frozen copy of it, for centering and movement. Architectures
        may lay the two out jointly (the MLP does, so one batched GEMM serves both)."""
        params = self.init(seeds, dtype=dtype, device=device)
        return params, {name: p.clone() for name, p in params.items()}

    def reset_members(self, params: Params, params0: Params, members: Tensor) -> None:
        """Put these members (indices (J,)) back at θ0 in place: diverged members must not hold NaN."""
        for name in params:
            params[name][members] = params0[name][members]

    def select_members(self, params: Params, params0: Params, keep: Tensor) -> tuple[Params, Params]:
        """(θ, θ0) of the members at positions `keep` (J,) only, laid out as `init_pair` would lay them
        out: the trainer drops dead members from the batched computation this way. Every op is
        per member, so the kept members compute bit for bit what they computed before."""
        return {n: p[keep] for n, p in params.items()}, {n: p[keep] for n, p in params0.items()}

    # -- forward

    def forward_one(self, p: Params, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        raise NotImplementedError

    def raw(self, params: Params, x: Tensor) -> tuple[Tensor, Tensor]:
        """All members' readout without 1/γ and features. x (B, ...) → ((K, B, C), (K, B, F))."""
        g, feats, _ = torch.func.vmap(self.forward_one, in_dims=(0, None))(params, x)
        return g, feats

    def preactivations(self, params: Params, x: Tensor) -> list[Tensor]:
        """Hidden pre-activations of every member, [(K, B, ...)] (for μP coordinate checks)."""
        _, _, hs = torch.func.vmap(self.forward_one, in_dims=(0, None))(params, x)
        return list(hs)

    def output(self, params: Params, params0: Params | None, x: Tensor, gamma: Tensor) -> Tensor:
        """The network function f (K, B, C): readout / γ, minus the frozen copy's when centered."""
        g, _ = self.raw(params, x)
        if params0 is not None:
            g0, _ = self.raw(params0, x)
            g = g - g0  # identical computation on identical values: exactly 0 at init
        return g / _expand(gamma, g)

    def hvp_operator(
        self, params: Params, x: Tensor, g0: Tensor | None, gamma: Tensor, loss: str, target: Tensor, label: Tensor
    ) -> Callable[[Params], Params]:
        """Every member's loss-Hessian-vector product on the points x, v ↦ H v (stacked like params), for
        the sharpness's eigensolvers. The loss is loss_fn(loss, f, target, label) with f = (g_θ(x) − g0)/γ,
        g0 θ0's readout on x (K, B, C) or None when not centered. Here by double backward
        (engine.metrics.autograd_hvp); the MLP writes it out by hand."""

        def loss_of(p: Params) -> Tensor:
            g = self.raw(p, x)[0]
            if g0 is not None:
                g = g - g0
            return loss_fn(loss, g / _expand(gamma, g), target, label)

        return autograd_hvp(loss_of, params)

    def features(self, params: Params, x: Tensor) -> Tensor:
        """Last-layer features φ(h_L) (pooled for conv nets). x (B, ...) → (K, B, F)."""
        return self.raw(params, x)[1]

    def output_one(self, p: Params, p0: Params | None, x: Tensor, gamma: Tensor) -> Tensor:
        """One member's f (B, C) — for per-member NTKs and the single-run reference in tests."""
        g = self.forward_one(p, x)[0]
        if p0 is not None:
            g = g - self.forward_one(p0, x)[0]
        return g / gamma

    # -- training

    def train_step(
        self,
        params: Params,
        params0: Params | None,
        x: Tensor,
        target: Tensor,
        label: Tensor,
        gamma: Tensor,
        step_size: Tensor,
        loss: str = "mse",
    ) -> Tensor:
        """One in-place SGD step for every member; returns the losses (K,) *before* the update.

        step_size (K,) is N·η per member, 0 for frozen members (their NaN gradients are masked out,
        never multiplied in). x (B, ...), target (B, C), label (B,), gamma (K,).
        """
        losses, grads = self.losses_and_grads(params, params0, x, target, label, gamma, loss)
        with torch.no_grad():
            for p, g in zip(params.values(), grads, strict=True):
                s = _expand(step_size, g)
                p.sub_(torch.where(s > 0, g * s, torch.zeros((), dtype=g.dtype, device=g.device)))
        return losses

    def losses_and_grads(
        self,
        params: Params,
        params0: Params | None,
        x: Tensor,
        target: Tensor,
        label: Tensor,
        gamma: Tensor,
        loss: str = "mse",
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """The losses (K,), detached, and every member's gradient of its own loss, in the order of
        `params`, by autograd on the sum of the losses (members are independent). The update steps
        (SGD here, engine.optim's Adam) start from these."""
        leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        with torch.enable_grad():
            losses = loss_fn(loss, self.output(leaves, params0, x, gamma), target, label)  # (K,)
            grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
        return losses.detach(), grads
