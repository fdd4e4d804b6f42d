"""μP-γ networks with per-member stacked parameters (design.md §2).

Every parameter of a K-member ensemble is one tensor with a leading K axis, so one forward call
computes all members. Rules (N = width, fan_in = inputs of the layer):

    hidden   h_{l+1} = (W_l φ(h_l) + b_l) / sqrt(fan_in)       W ~ N(0, 1), b = 0
    conv     the same with fan_in = C_in (not C_in·k²)
    readout  f = (W_L φ(h_L) + b_L) / (fan_in · γ)
    centered f(x) = f_θ(x) − f_θ0(x), θ0 a frozen copy: the output is exactly 0 at init

Member k is initialized from its own seed exactly as a single run with that seed would be
(a float64 CPU generator, then cast), so an ensemble equals K separate runs.

Architectures:
  mlp     L weight layers, activation relu/tanh/linear. Batched by hand (one GEMM for the shared
          input's first layer, bmm after) with a hand-written backward for the SGD step, on a packed
          layout (MLP.init_pair): θ and the θ0 of each distinct seed in one tensor per layer, biases
          folded into the GEMMs, so a step is ~7 GEMMs and 4 elementwise passes over (K, N, B).
  cnn     the reference CNN: conv3×3 C→N, φ, avgpool2, conv3×3 N→2N, φ, avgpool2, dense→8N, φ, readout.
  resnet  μP ResNet-18-style: a 3×3 stem to N channels, then `depth` pre-activation basic blocks in
          up to 4 stages of widths N, 2N, 4N, 8N (two blocks a stage; depth=8 is ResNet-18's layout),
          stride 2 and a 1×1 projection when a stage starts, global average pool, readout.
          It is norm-free: BatchNorm's batch statistics and running buffers do not batch cleanly
          under vmap and mix samples within a batch, so the default (and only) variant drops
          normalization; each residual branch is scaled by 1/sqrt(depth) so that activations stay O(1)
          at any depth without it.
  vit     small patch ViT: patches of `patch`² pixels embedded to N, learned positions, `depth`
          pre-LN blocks (parameter-free LayerNorm) with μP attention — scores q·k / d_head, not
          / sqrt(d_head) — and an MLP N→2N→N, branches scaled by 1/sqrt(depth), mean-pool, readout.
The non-MLP architectures are written for one member and batched with torch.func.vmap (grouped
convolutions underneath); their SGD step uses autograd on the sum of member losses (members are
independent, so each gets its own gradient).

`select_members` gathers some members into a smaller ensemble laid out as `init_pair` lays it out
(the MLP repacks θ and keeps only the θ0 slots still used): the trainer drops diverged and cancelled
members that way. The kept members compute bit for bit what they did, at widths that fill whole SIMD
blocks (multiples of 16; a width-3 CNN's channels round by their place in oneDNN's blocks) and, for
the ViT, with at least two members (`min_members`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.config import ConfigError, ModelConfig
from engine.metrics import loss_fn

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
        leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        with torch.enable_grad():
            losses = loss_fn(loss, self.output(leaves, params0, x, gamma), target, label)  # (K,)
            grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
        with torch.no_grad():
            for p, g in zip(params.values(), grads, strict=True):
                s = _expand(step_size, g)
                p.sub_(torch.where(s > 0, g * s, torch.zeros((), dtype=g.dtype, device=g.device)))
        return losses.detach()


# ----------------------------------------------------------------------------- MLP


class MLP(EnsembleModel):
    """L weight layers D→N→…→N→C. Column layout inside: activations are (K, N, B), so every layer is
    one bmm without transposes and the first layer (shared input) is one (K·N, D) @ (D, B) GEMM."""

    def __init__(self, model: ModelConfig, input_shape: Sequence[int], n_outputs: int):
        super().__init__(model, input_shape, n_outputs)
        self.in_dim = math.prod(self.input_shape)
        dims = [self.in_dim] + [model.width] * (model.depth - 1) + [self.n_outputs]
        self.dims = dims
        for layer in range(model.depth):
            self.specs[f"w{layer + 1}"] = ((dims[layer + 1], dims[layer]), "w")
            self.specs[f"b{layer + 1}"] = ((dims[layer + 1],), "b")

    def forward_one(self, p: Params, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        # The plain single-member path (row layout): the independent reference for the batched one.
        a = x.reshape(x.shape[0], -1)  # (B, D)
        hs = []
        depth = self.config.depth
        for layer in range(1, depth):
            h = dense(a, p[f"w{layer}"], p[f"b{layer}"])  # (B, N)
            hs.append(h)
            a = activation(self.act, h)
        g = readout(a, p[f"w{depth}"], p[f"b{depth}"])  # (B, C)
        return g, a, hs

    def _forward_cols(self, params: Params, x: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Batched forward. x (B, D) → readout g (K, C, B), pre-activations [(K, N, B)], activations
        [x (D, B) then (K, N, B) per hidden layer] (kept for the hand backward)."""
        depth = self.config.depth
        k = params["w1"].shape[0]
        xt = x.reshape(x.shape[0], -1).T  # (D, B), a view
        scale = layer_scales(self.dims)
        n1 = self.dims[1]
        # one GEMM for all members: (K·N, D) @ (D, B) → (K·N, B); bias folded in with beta
        h = torch.addmm(
            params["b1"].reshape(k * n1, 1), params["w1"].reshape(k * n1, -1), xt, beta=scale[0], alpha=scale[0]
        )
        h = h.view(k, n1, -1)  # (K, N, B)
        hs, acts = [h], [xt]
        for layer in range(2, depth + 1):
            a = activation(self.act, h)
            acts.append(a)
            s = scale[layer - 1]
            h = torch.baddbmm(params[f"b{layer}"].unsqueeze(-1), params[f"w{layer}"], a, beta=s, alpha=s)
            if layer < depth:
                hs.append(h)
        return h, hs, acts  # h is the readout g (K, C, B)

    def raw(self, params: Params, x: Tensor) -> tuple[Tensor, Tensor]:
        g, hs, acts = self._forward_cols(params, x)
        feats = activation(self.act, hs[-1])  # (K, N, B)
        return g.transpose(1, 2), feats.transpose(1, 2)

    def preactivations(self, params: Params, x: Tensor) -> list[Tensor]:
        return [h.transpose(1, 2) for h in self._forward_cols(params, x)[1]]

    def ntk(self, params: Params, x: Tensor, gamma: Tensor) -> Tensor:
        """Class-summed empirical NTK in closed form, (K, P, P) for x (P, D). Much cheaper than
        jacobians: for layer u_l = W_l a_l + b_l the kernel term is Σ_c (E_c E_cᵀ) ∘ (A Aᵀ + 1), with
        E_c = ∂f_c/∂u_l (K, C, P, out) back-propagated once per class (C small), A the layer input."""
        depth = self.config.depth
        k = params["w1"].shape[0]
        p_pts = x.shape[0]
        _, hs, acts = self._forward_cols(params, x)
        a_rows = [acts[0].T.expand(k, -1, -1)] + [a.transpose(1, 2) for a in acts[1:]]  # [(K, P, fan)]
        scale = layer_scales(self.dims)
        eye = torch.eye(self.n_outputs, dtype=x.dtype, device=x.device)
        # E for the readout's u: ∂f_c/∂u_L[c'] = s_L/γ δ_cc' → (K, C, P, C)
        eye = eye.view(1, self.n_outputs, 1, self.n_outputs).expand(k, -1, p_pts, -1)
        e = (scale[depth - 1] / gamma).view(k, 1, 1, 1) * eye
        kernel = torch.zeros(k, p_pts, p_pts, dtype=x.dtype, device=x.device)
        for layer in range(depth, 0, -1):
            a = a_rows[layer - 1]  # (K, P, fan)
            ee = torch.einsum("kcpo,kcqo->kpq", e, e)  # Σ_c E_c E_cᵀ
            kernel += ee * (a @ a.transpose(1, 2) + 1)
            if layer > 1:
                e = torch.einsum("kcpo,koi->kcpi", e, params[f"w{layer}"])  # ∂f/∂a_l
                h = hs[layer - 2].transpose(1, 2).unsqueeze(1)  # (K, 1, P, N)
                if self.act == "relu":
                    e = e * (h > 0)
                elif self.act == "tanh":
                    e = e * (1 - torch.tanh(h) ** 2)
                e = e * scale[layer - 2]
        return kernel

    # -- the training hot loop
    #
    # Packed layout: each layer l is one tensor (K + U, out, P) holding θ for members [:K] and, in
    # [K:], the frozen θ0 of the U distinct seeds: columns [:fan_in] W, column fan_in the bias, the
    # rest zero padding up to P = fan_in + 1 rounded up to 16 (aligned rows: MKL's in-place update
    # GEMM runs ~1.6× faster with ld 272 than with ld 257; padded columns stay 0). θ0
    # depends only on the seed (γ and η do not enter the initialization), so a grid with few seeds
    # needs few centering forwards: member k subtracts the readout of θ0 slot `theta0_index[k]`.
    # `init_pair` returns w{l}, b{l} as views into [:K], so the rest of the engine sees ordinary
    # (K, out, in) / (K, out) parameters, and θ0 per member as plain tensors (for movement, resets).
    # Against the activations augmented with a row of ones and zero rows (K + U, P, B):
    #   * every forward layer is one GEMM with the bias folded in (no broadcast copy of b),
    #   * θ and θ0 go through the network in the same batched GEMMs (centering fused, and θ, θ0
    #     computed by the same kernels, so f is exactly 0 at init),
    #   * every weight update — W and b together — is one in-place GEMM.
    # All activations and gradients live in buffers reused across steps.

    def init_pair(
        self, seeds: Sequence[int], dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> tuple[Params, Params]:
        p = self.init(seeds, dtype=dtype, device=device)
        k = len(seeds)
        distinct = list(dict.fromkeys(int(s) for s in seeds))  # first appearance order
        first = [[int(s) for s in seeds].index(s) for s in distinct]  # a member holding each seed
        slot = {s: i for i, s in enumerate(distinct)}
        index = torch.tensor([slot[int(s)] for s in seeds], dtype=torch.long, device=device)  # (K,)
        params: Params = {}
        params0: Params = {}
        first_t = torch.tensor(first, dtype=torch.long, device=device)
        for layer in range(1, self.config.depth + 1):
            w, b = p[f"w{layer}"], p[f"b{layer}"]
            fan = self.dims[layer - 1]
            packed = torch.zeros(k + len(distinct), w.shape[1], self._width(layer), dtype=dtype, device=device)
            packed[:k, :, :fan] = w
            packed[:k, :, fan] = b
            packed[k:] = packed[:k].index_select(0, first_t)
            params[f"w{layer}"] = packed[:k, :, :fan]  # (K, out, in), row stride P
            params[f"b{layer}"] = packed[:k, :, fan]  # (K, out)
            params0[f"w{layer}"] = w.clone()
            params0[f"b{layer}"] = b.clone()
        # remembered so that train_step can recognise this pair and use the packed θ0 slots
        self._pair = (params0, index, len(distinct))
        return params, params0

    def _width(self, layer: int) -> int:
        """P: the packed row length of weight layer `layer` (1-based), fan_in + 1 rounded up to 16."""
        return -(-(self.dims[layer - 1] + 1) // 16) * 16

    def reset_members(self, params: Params, params0: Params, members: Tensor) -> None:
        found = self._packed(params, params0)
        if found is not None:
            for layer, base in enumerate(found[0], start=1):
                # the padding of a member that diverged mid-step may hold 0·inf = NaN: clear it too
                base[members, :, self.dims[layer - 1] + 1 :] = 0
        super().reset_members(params, params0, members)

    def select_members(self, params: Params, params0: Params, keep: Tensor) -> tuple[Params, Params]:
        found = self._packed(params, params0)
        if found is None or found[1] is None:  # not laid out by init_pair: plain tensors
            return super().select_members(params, params0, keep)
        bases, index = found[0], found[1]
        k, j = params["w1"].shape[0], keep.shape[0]
        # the θ0 slots the kept members still use (a slot serving only dead members is dropped)
        slots, index = torch.unique(index.index_select(0, keep), return_inverse=True)
        rows = torch.cat([keep, k + slots])
        sub: Params = {}
        for layer, base in enumerate(bases, start=1):
            packed = base.index_select(0, rows)  # (J + U', out, P), contiguous
            fan = self.dims[layer - 1]
            sub[f"w{layer}"], sub[f"b{layer}"] = packed[:j, :, :fan], packed[:j, :, fan]
        sub0 = {n: p.index_select(0, keep) for n, p in params0.items()}
        self._pair = (sub0, index, int(slots.shape[0]))
        return sub, sub0

    def _packed(self, params: Params, params0: Params | None) -> tuple[list[Tensor], Tensor | None] | None:
        """(the (K + U, out, P) tensors behind params, θ0 slot of each member or None when not
        centered) when params (and params0) come from `init_pair`; None otherwise."""
        k = params["w1"].shape[0]
        index: Tensor | None = None
        slots = 0
        if params0 is not None:
            pair = getattr(self, "_pair", None)
            if pair is None or pair[0] is not params0 or pair[1].shape[0] != k:
                return None
            index, slots = pair[1], pair[2]
        out: list[Tensor] = []
        for layer in range(1, self.config.depth + 1):
            w, b = params[f"w{layer}"], params[f"b{layer}"]
            base = w._base
            fan = self.dims[layer - 1]
            if (
                base is None
                or b._base is not base
                or base.dim() != 3
                or base.shape[0] < k
                or tuple(base.shape[1:]) != (w.shape[1], self._width(layer))
                or not base.is_contiguous()
                or w.data_ptr() != base.data_ptr()
                or b.data_ptr() != base.data_ptr() + fan * base.element_size()
                or (index is not None and base.shape[0] != k + slots)
            ):
                return None
            out.append(base)
        return out, index

    def _buffers(self, members: int, k: int, batch: int, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
        """Activation and gradient buffers reused across steps (allocated once per shape)."""
        key = (members, k, batch, dtype, device)
        cached = getattr(self, "_buffer_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        n, depth = self.config.width, self.config.depth
        x_aug = torch.zeros(self._width(1), batch, dtype=dtype, device=device)  # (P, B): x, a ones row, zeros
        x_aug[self.in_dim] = 1
        acts = []
        for layer in range(2, depth + 1):
            a = torch.zeros(members, self._width(layer), batch, dtype=dtype, device=device)  # (M, P, B)
            a[:, n] = 1  # rows [:N] get φ(h) each step, row N stays 1, the padding stays 0
            acts.append(a)
        bufs = {
            "x_aug": x_aug,
            "acts": acts,
            "h": torch.empty(members, n, batch, dtype=dtype, device=device),  # pre-activation scratch (M, N, B)
            "g": torch.empty(members, self.n_outputs, batch, dtype=dtype, device=device),  # readout (M, C, B)
            "grads": [torch.empty(k, n, batch, dtype=dtype, device=device) for _ in range(depth - 1)],  # δh_l (K, N, B)
        }
        self._buffer_cache = (key, bufs)
        return bufs

    def _activate_into(self, h: Tensor, out: Tensor) -> None:
        """out = φ(h) in one pass. h (M, N, B) contiguous, out a (M, N, B) view of an augmented buffer."""
        if self.act == "relu":
            torch.clamp_min(h, 0, out=out)
        elif self.act == "tanh":
            torch.tanh(h, out=out)
        else:
            out.copy_(h)

    def _act_grad_(self, delta: Tensor, a: Tensor) -> None:
        """δh = δa · φ'(h) in place on δa, from the activation a = φ(h) (h itself is not kept:
        relu(h) > 0 exactly where h > 0, and tanh' = 1 − a²). Both (K, N, B)."""
        if self.act == "relu":
            torch.ops.aten.threshold_backward.grad_input(delta, a, 0, grad_input=delta)  # one fused pass
        elif self.act == "tanh":
            delta.mul_(1 - a * a)

    @torch.no_grad()
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
        # Hand-written backward: autograd's bookkeeping costs more than the small GEMMs on CPU.
        if loss not in ("mse", "xent"):
            raise ConfigError("train.loss", f"must be one of mse, xent (got {loss!r})")
        depth = self.config.depth
        k = params["w1"].shape[0]
        found = self._packed(params, params0)
        if found is not None:
            return self._step_packed(found[0], k, found[1], x, target, label, gamma, step_size, loss)
        # parameters not laid out by init_pair: pack a copy (θ0 one slot per member), step it, write θ back
        packed = []
        for layer in range(1, depth + 1):
            halves = [params] if params0 is None else [params, params0]
            w = torch.cat([h[f"w{layer}"] for h in halves])  # (K or 2K, out, in)
            base = w.new_zeros(w.shape[0], w.shape[1], self._width(layer))
            base[:, :, : w.shape[2]] = w
            base[:, :, w.shape[2]] = torch.cat([h[f"b{layer}"] for h in halves])
            packed.append(base)
        index = None if params0 is None else torch.arange(k, device=x.device)
        losses = self._step_packed(packed, k, index, x, target, label, gamma, step_size, loss)
        for layer, base in enumerate(packed, start=1):
            fan = self.dims[layer - 1]
            params[f"w{layer}"].copy_(base[:k, :, :fan])
            params[f"b{layer}"].copy_(base[:k, :, fan])
        return losses

    def _step_packed(
        self,
        packed: list[Tensor],
        k: int,
        theta0_index: Tensor | None,
        x: Tensor,
        target: Tensor,
        label: Tensor,
        gamma: Tensor,
        step_size: Tensor,
        loss: str,
    ) -> Tensor:
        """One SGD step on packed layers [(M, out, P)] whose first K members are θ (updated in
        place) and, when centered, whose next U are θ0 slots (read only); member k is centered by
        slot theta0_index[k] (K,). Returns the losses (K,)."""
        depth, n, c = self.config.depth, self.config.width, self.n_outputs
        m = packed[0].shape[0] if theta0_index is not None else k  # members in the forward pass
        b = x.shape[0]
        buf = self._buffers(m, k, b, x.dtype, x.device)
        x_aug, acts, h, g, grads = buf["x_aug"], buf["acts"], buf["h"], buf["g"], buf["grads"]
        x_aug[: self.in_dim].copy_(x.reshape(b, -1).T)  # (D, B); the ones row stays
        scale = layer_scales(self.dims)

        # forward θ and the θ0 slots together. Layer 1 (shared input): one (M·N, P) @ (P, B) GEMM.
        torch.addmm(
            h.view(m * n, b), packed[0][:m].view(m * n, -1), x_aug, beta=0, alpha=scale[0], out=h.view(m * n, b)
        )
        self._activate_into(h, acts[0][:, :n])
        for layer in range(2, depth):
            torch.baddbmm(h, packed[layer - 1][:m], acts[layer - 2], beta=0, alpha=scale[layer - 1], out=h)
            self._activate_into(h, acts[layer - 1][:, :n])
        torch.baddbmm(g, packed[depth - 1][:m], acts[depth - 2], beta=0, alpha=scale[depth - 1], out=g)  # (M, C, B)

        # loss and its gradient on the output, f = (g_θ − g_θ0) / γ  (K, C, B)
        inv_gamma = (1.0 / gamma).view(k, 1, 1)
        diff = g[:k] if theta0_index is None else torch.sub(g[:k], g[k:m].index_select(0, theta0_index))
        if loss == "mse":
            minus_y = target.T.neg().contiguous()  # (C, B), tiny
            resid = torch.addcmul(minus_y, diff, inv_gamma)  # f − y in one pass, (K, C, B)
            flat = resid.reshape(k, 1, c * b)
            losses = torch.bmm(flat, flat.transpose(1, 2)).view(k).div_(b * c)  # mean of squares, one pass
            dfdl, dloss = resid, 2.0 / (b * c)  # ∂loss/∂f = 2 (f − y) / (B·C), the constant folded below
        else:
            logp = torch.log_softmax(diff.mul(inv_gamma), dim=1)  # (K, C, B)
            idx = label.view(1, 1, -1).expand(k, 1, -1)
            losses = -logp.gather(1, idx).mean(dim=(1, 2))
            dfdl = logp.exp_()
            dfdl.scatter_add_(1, idx, torch.full_like(dfdl[:, :1], -1.0))
            dloss = 1.0 / b
        # each member's step size and 1/γ folded into δ once; frozen members get exact zeros (where,
        # not a multiply, so NaN/inf errors never reach the update)
        coef = (step_size / gamma * dloss).view(k, 1, 1)  # (K, 1, 1), a tiny op
        delta = torch.where(coef > 0, dfdl.mul_(coef), torch.zeros((), dtype=x.dtype, device=x.device))

        # backward over θ only (members [:K]); δ of layer l is (K, out_l, B)
        for layer in range(depth, 1, -1):
            base = packed[layer - 1][:k]  # (K, out, P)
            fan = self.dims[layer - 1]
            a_aug = acts[layer - 2][:k]  # (K, P, B)
            delta_prev = grads[layer - 2]
            # δa = s Wᵀ δ must use W before its update
            torch.baddbmm(
                delta_prev, base[:, :, :fan].transpose(1, 2), delta, beta=0, alpha=scale[layer - 1], out=delta_prev
            )
            base.baddbmm_(delta, a_aug.transpose(1, 2), alpha=-scale[layer - 1])  # W and b in one GEMM
            self._act_grad_(delta_prev, a_aug[:, :n])
            delta = delta_prev
        # shared input: one (K·N, B) @ (B, P) GEMM updates every member's first layer and bias
        packed[0][:k].view(k * n, -1).addmm_(delta.reshape(k * n, b), x_aug.T, alpha=-scale[0])
        return losses


# ----------------------------------------------------------------------------- CNN


class CNN(EnsembleModel):
    def __init__(self, model: ModelConfig, input_shape: Sequence[int], n_outputs: int):
        super().__init__(model, input_shape, n_outputs)
        if len(self.input_shape) != 3:
            raise ConfigError("model.arch", f"cnn needs image inputs (C, H, W) (got shape {self.input_shape})")
        c, hgt, wid = self.input_shape
        if hgt < 4 or wid < 4:
            raise ConfigError("data.image_size", f"cnn pools twice by 2: images must be at least 4×4 (got {hgt}×{wid})")
        n = model.width
        flat = 2 * n * (hgt // 4) * (wid // 4)
        self.specs = {
            "conv1": ((n, c, 3, 3), "w"), "conv1_b": ((n,), "b"),
            "conv2": ((2 * n, n, 3, 3), "w"), "conv2_b": ((2 * n,), "b"),
            "dense": ((8 * n, flat), "w"), "dense_b": ((8 * n,), "b"),
            "readout": ((self.n_outputs, 8 * n), "w"), "readout_b": ((self.n_outputs,), "b"),
        }  # fmt: skip

    def forward_one(self, p: Params, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        h1 = conv(x, p["conv1"], p["conv1_b"])  # (B, N, H, W)
        a = F.avg_pool2d(activation(self.act, h1), 2)
        h2 = conv(a, p["conv2"], p["conv2_b"])  # (B, 2N, H/2, W/2)
        a = F.avg_pool2d(activation(self.act, h2), 2).flatten(1)  # (B, 2N·H/4·W/4)
        h3 = dense(a, p["dense"], p["dense_b"])  # (B, 8N)
        feats = activation(self.act, h3)
        g = readout(feats, p["readout"], p["readout_b"])  # (B, C)
        return g, feats, [h1, h2, h3]


# ----------------------------------------------------------------------------- ResNet


class ResNet(EnsembleModel):
    def __init__(self, model: ModelConfig, input_shape: Sequence[int], n_outputs: int):
        super().__init__(model, input_shape, n_outputs)
        if len(self.input_shape) != 3:
            raise ConfigError("model.arch", f"resnet needs image inputs (C, H, W) (got shape {self.input_shape})")
        c = self.input_shape[0]
        n = model.width
        self.specs["stem"] = ((n, c, 3, 3), "w")
        self.specs["stem_b"] = ((n,), "b")
        self.blocks: list[tuple[str, int, bool]] = []  # (prefix, stride, has projection)
        c_in = n
        for i in range(model.depth):
            stage = min(i // 2, 3)
            c_out = n * 2**stage
            first = i % 2 == 0 and stage > 0 and i // 2 <= 3
            stride = 2 if first else 1
            pre = f"block{i + 1}"
            self.specs[f"{pre}.conv1"] = ((c_out, c_in, 3, 3), "w")
            self.specs[f"{pre}.conv1_b"] = ((c_out,), "b")
            self.specs[f"{pre}.conv2"] = ((c_out, c_out, 3, 3), "w")
            self.specs[f"{pre}.conv2_b"] = ((c_out,), "b")
            proj = stride != 1 or c_in != c_out
            if proj:
                self.specs[f"{pre}.proj"] = ((c_out, c_in, 1, 1), "w")
                self.specs[f"{pre}.proj_b"] = ((c_out,), "b")
            self.blocks.append((pre, stride, proj))
            c_in = c_out
        self.specs["readout"] = ((self.n_outputs, c_in), "w")
        self.specs["readout_b"] = ((self.n_outputs,), "b")

    def forward_one(self, p: Params, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        branch_scale = 1.0 / math.sqrt(self.config.depth)
        h = conv(x, p["stem"], p["stem_b"])  # (B, N, H, W)
        hs = [h]
        for pre, stride, proj in self.blocks:
            u = conv(activation(self.act, h), p[f"{pre}.conv1"], p[f"{pre}.conv1_b"], stride)
            u = conv(activation(self.act, u), p[f"{pre}.conv2"], p[f"{pre}.conv2_b"])
            skip = conv(h, p[f"{pre}.proj"], p[f"{pre}.proj_b"], stride) if proj else h
            h = skip + branch_scale * u  # (B, C_stage, H_s, W_s)
            hs.append(h)
        feats = activation(self.act, h).mean(dim=(-2, -1))  # (B, 8N) global average pool
        g = readout(feats, p["readout"], p["readout_b"])  # (B, C)
        return g, feats, hs


# ----------------------------------------------------------------------------- ViT


def _layer_norm(x: Tensor) -> Tensor:
    return F.layer_norm(x, x.shape[-1:])  # parameter-free: nothing to batch, nothing to scale


class ViT(EnsembleModel):
    def __init__(self, model: ModelConfig, input_shape: Sequence[int], n_outputs: int):
        super().__init__(model, input_shape, n_outputs)
        # vmap of the token matmuls over a single member takes another kernel path, which rounds
        # differently: a compacted ViT ensemble keeps a frozen dead member beside a lone survivor
        self.min_members = 2
        if len(self.input_shape) != 3:
            raise ConfigError("model.arch", f"vit needs image inputs (C, H, W) (got shape {self.input_shape})")
        c, hgt, wid = self.input_shape
        ps = model.patch
        if hgt % ps or wid % ps:
            raise ConfigError("model.patch", f"must divide the image size {hgt}×{wid} (got {ps})")
        n = model.width
        self.tokens = (hgt // ps) * (wid // ps)
        self.specs["embed"] = ((n, c * ps * ps), "w")
        self.specs["embed_b"] = ((n,), "b")
        self.specs["pos"] = ((self.tokens, n), "e")
        for i in range(model.depth):
            pre = f"block{i + 1}"
            self.specs[f"{pre}.qkv"] = ((3 * n, n), "w")
            self.specs[f"{pre}.qkv_b"] = ((3 * n,), "b")
            self.specs[f"{pre}.proj"] = ((n, n), "w")
            self.specs[f"{pre}.proj_b"] = ((n,), "b")
            self.specs[f"{pre}.fc1"] = ((2 * n, n), "w")
            self.specs[f"{pre}.fc1_b"] = ((2 * n,), "b")
            self.specs[f"{pre}.fc2"] = ((n, 2 * n), "w")
            self.specs[f"{pre}.fc2_b"] = ((n,), "b")
        self.specs["readout"] = ((self.n_outputs, n), "w")
        self.specs["readout_b"] = ((self.n_outputs,), "b")

    def forward_one(self, p: Params, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        cfg = self.config
        n, heads, ps = cfg.width, cfg.heads, cfg.patch
        d = n // heads
        bsz = x.shape[0]
        patches = F.unfold(x, kernel_size=ps, stride=ps).transpose(1, 2)  # (B, T, C·p²)
        h = dense(patches, p["embed"], p["embed_b"]) + p["pos"]  # (B, T, N)
        hs = [h]
        branch_scale = 1.0 / math.sqrt(cfg.depth)
        for i in range(cfg.depth):
            pre = f"block{i + 1}"
            qkv = dense(_layer_norm(h), p[f"{pre}.qkv"], p[f"{pre}.qkv_b"])  # (B, T, 3N)
            q, k, v = qkv.view(bsz, -1, 3, heads, d).permute(2, 0, 3, 1, 4)  # each (B, H, T, d)
            scores = q @ k.transpose(-1, -2) / d  # μP: 1/d_head keeps updates O(1) as d grows
            att = torch.softmax(scores, dim=-1) @ v  # (B, H, T, d)
            att = att.transpose(1, 2).reshape(bsz, -1, n)
            # not branch_scale * dense(...): (s·y)/√N rounds differently from s·(y/√N), and stored
            # runs were computed this way
            h = h + branch_scale * (att @ p[f"{pre}.proj"].T + p[f"{pre}.proj_b"]) / math.sqrt(n)
            u = dense(_layer_norm(h), p[f"{pre}.fc1"], p[f"{pre}.fc1_b"])  # (B, T, 2N)
            u = dense(activation(self.act, u), p[f"{pre}.fc2"], p[f"{pre}.fc2_b"])  # (B, T, N)
            h = h + branch_scale * u
            hs.append(h)
        feats = _layer_norm(h).mean(dim=1)  # (B, N)
        g = readout(feats, p["readout"], p["readout_b"])  # (B, C)
        return g, feats, hs


_ARCHS: dict[str, type[EnsembleModel]] = {"mlp": MLP, "cnn": CNN, "resnet": ResNet, "vit": ViT}


def build_model(model: ModelConfig, input_shape: Sequence[int], n_outputs: int) -> EnsembleModel:
    """The functional μP-γ network for this config (design.md §2), parameters stacked per member."""
    if model.arch not in _ARCHS:
        raise ConfigError("model.arch", f"must be one of {', '.join(_ARCHS)} (got {model.arch!r})")
    return _ARCHS[model.arch](model, input_shape, n_outputs)
