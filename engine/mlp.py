"""The μP-γ MLP (design.md §2): L weight layers D→N→…→N→C, activation relu/tanh/linear.

Batched by hand (one GEMM for the shared input's first layer, bmm after) with a hand-written backward
for the SGD step, on a packed layout (MLP.init_pair): θ and the θ0 of each distinct seed in one tensor
per layer, biases folded into the GEMMs, so a step is ~7 GEMMs and 4 elementwise passes over
(K, N, B). `forward_one` is the plain single-member path, the independent reference for the batched
one; `ntk` is the class-summed empirical NTK in closed form. `select_members` repacks θ and keeps only
the θ0 slots still used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from engine.config import ConfigError, ModelConfig
from engine.ensemble import EnsembleModel, Params, activation, dense, layer_scales, readout
from engine.metrics import loss_output_derivatives


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
        c = self.n_outputs
        eye = torch.eye(c, dtype=x.dtype, device=x.device)
        # E for the readout's u: ∂f_c/∂u_L[c'] = s_L/γ δ_cc', laid out (K, P, C, out) so that both
        # contractions below are plain batched GEMMs on views (no permuted copies of E)
        e = ((scale[depth - 1] / gamma).view(k, 1, 1, 1) * eye.view(1, 1, c, c)).expand(k, p_pts, c, c)
        kernel = torch.zeros(k, p_pts, p_pts, dtype=x.dtype, device=x.device)
        for layer in range(depth, 0, -1):
            a = a_rows[layer - 1]  # (K, P, fan)
            flat = e.reshape(k, p_pts, -1)  # (K, P, C·out)
            ee = torch.bmm(flat, flat.transpose(1, 2))  # Σ_c E_c E_cᵀ
            kernel.addcmul_(ee, torch.baddbmm(ee.new_ones(()).expand_as(ee), a, a.transpose(1, 2)))
            if layer > 1:
                w = params[f"w{layer}"]  # (K, out, in)
                e = torch.bmm(e.reshape(k, p_pts * c, -1), w).view(k, p_pts, c, -1)  # ∂f/∂a_l
                h = hs[layer - 2].transpose(1, 2).unsqueeze(2)  # (K, P, 1, N)
                if self.act == "relu":
                    e.mul_(h > 0)
                elif self.act == "tanh":
                    e.mul_(1 - torch.tanh(h) ** 2)
                e.mul_(scale[layer - 2])
        return kernel

    @torch.no_grad()
    def hvp_operator(
        self, params: Params, x: Tensor, g0: Tensor | None, gamma: Tensor, loss: str, target: Tensor, label: Tensor
    ) -> Callable[[Params], Params]:
        """Every member's loss-Hessian-vector product on the points x, written out by hand (Pearlmutter's
        R-operator), for the sharpness's eigensolvers: v ↦ H v with v and H v stacked like params.

        The loss is loss_fn(loss, f, target, label) with f = (g_θ(x) − g0) / γ (g0 θ0's readout on x,
        (K, B, C), or None when not centered): the function autograd_hvp differentiates twice. The
        forward and the backward of the gradient (δ_l = ∂L/∂h_l, the pre-activations' derivatives)
        are computed once here; a product then runs the directional derivative R{·} = d/dε(·)(θ + εv)
        forward (R{h}, R{a} = φ'(h)·R{h}), through the loss's output Hessian, and back
        (R{δ_{l−1}} = φ''(h)·R{h}·m_l + φ'(h)·s_l (V_lᵀ δ_l + W_lᵀ R{δ_l}), m_l = s_l W_lᵀ δ_l), and
        reads H v off as R{∂L/∂W_l} = s_l (R{δ_l} a_{l−1}ᵀ + δ_l R{a_{l−1}}ᵀ), R{∂L/∂b_l} = s_l Σ R{δ_l}:
        about two training steps' GEMMs, against about three and a half for double backward through
        the generic forward (bench/sharpness.py)."""
        depth = self.config.depth
        k = params["w1"].shape[0]
        scale = layer_scales(self.dims)
        g, hs, acts = self._forward_cols(params, x)  # g (K, C, B); hs, acts[1:] (K, N, B); acts[0] = xᵀ
        xt = acts[0]
        f = g.transpose(1, 2)
        if g0 is not None:
            f = f - g0
        inv_gamma = (1 / gamma).view(k, 1, 1)
        d_f, hess_f = loss_output_derivatives(loss, f * inv_gamma, target, label)  # (K, B, C)
        # the activations' first and second derivatives at the hidden pre-activations
        if self.act == "relu":
            d1 = [(h > 0).to(h.dtype) for h in hs]
            d2: list[Tensor | None] = [None] * len(hs)
        elif self.act == "tanh":
            d1 = [1 - a * a for a in acts[1:]]
            d2 = [-2 * a * d for a, d in zip(acts[1:], d1, strict=True)]
        else:
            d1 = [torch.ones_like(h) for h in hs]
            d2 = [None] * len(hs)
        # δ_l (K, out_l, B) for l = 1..L and m_l = s_l W_lᵀ δ_l (∂L/∂a_{l−1}) for l = 2..L (0-based lists)
        delta: list[Tensor] = [torch.empty(0)] * depth
        m: list[Tensor] = [torch.empty(0)] * depth
        delta[depth - 1] = (d_f * inv_gamma).transpose(1, 2)
        for layer in range(depth, 1, -1):
            m[layer - 1] = scale[layer - 1] * torch.bmm(params[f"w{layer}"].transpose(1, 2), delta[layer - 1])
            delta[layer - 2] = d1[layer - 2] * m[layer - 1]
        # φ''(h)·m, the term of R{δ} that the direction enters through R{h} only (0 for relu, linear)
        curv = [None if d is None else d * m[i + 1] for i, d in enumerate(d2)]

        def hvp(v: Params) -> Params:
            n1 = self.dims[1]
            rh = [
                torch.addmm(
                    v["b1"].reshape(k * n1, 1), v["w1"].reshape(k * n1, -1), xt, beta=scale[0], alpha=scale[0]
                ).view(k, n1, -1)
            ]
            ra: list[Tensor] = []
            for layer in range(2, depth + 1):
                ra.append(d1[layer - 2] * rh[-1])
                s = scale[layer - 1]
                r = torch.baddbmm(v[f"b{layer}"].unsqueeze(-1), v[f"w{layer}"], acts[layer - 1], beta=s, alpha=s)
                rh.append(torch.baddbmm(r, params[f"w{layer}"], ra[-1], alpha=s))
            r_f = rh[-1].transpose(1, 2) * inv_gamma
            r_delta = (hess_f(r_f) * inv_gamma).transpose(1, 2)  # R{δ_L} (K, C, B)
            out: Params = {}
            for layer in range(depth, 0, -1):
                s = scale[layer - 1]
                if layer == 1:
                    out["w1"] = s * torch.matmul(r_delta, xt.T)
                else:
                    a_in = acts[layer - 1]
                    out[f"w{layer}"] = torch.baddbmm(
                        torch.bmm(delta[layer - 1], ra[layer - 2].transpose(1, 2)),
                        r_delta,
                        a_in.transpose(1, 2),
                    ).mul_(s)
                out[f"b{layer}"] = s * r_delta.sum(-1)
                if layer > 1:
                    w_t = params[f"w{layer}"].transpose(1, 2)
                    r_m = torch.baddbmm(torch.bmm(v[f"w{layer}"].transpose(1, 2), delta[layer - 1]), w_t, r_delta)
                    r_m.mul_(s)
                    r_next = d1[layer - 2] * r_m
                    c = curv[layer - 2]
                    if c is not None:
                        r_next.addcmul_(c, rh[layer - 2])
                    r_delta = r_next
            return {name: out[name] for name in params}

        return hvp

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
