"""Diagnostics as pure functions (design.md §2). No I/O, no state: tensors in, tensors out.

Shapes: K = ensemble members, B/P = batch/probe points, C = outputs, F = feature dimension.
Every function works per member along the leading K axis, so one call serves a whole ensemble.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Params = dict[str, Tensor]


# ----------------------------------------------------------------------------- losses


def mse_loss(output: Tensor, target: Tensor) -> Tensor:
    """Mean over batch × classes of (f − y)². output (K, B, C), target (B, C) → (K,)."""
    return (output - target).pow(2).mean(dim=(-2, -1))


def xent_loss(output: Tensor, label: Tensor) -> Tensor:
    """Softmax cross-entropy, mean over the batch. output (K, B, C), label (B,) long → (K,)."""
    logp = torch.log_softmax(output, dim=-1)  # (K, B, C)
    picked = logp.gather(-1, label.view(1, -1, 1).expand(output.shape[0], -1, 1))  # (K, B, 1)
    return -picked.squeeze(-1).mean(dim=-1)


def loss_fn(kind: str, output: Tensor, target: Tensor, label: Tensor) -> Tensor:
    """Dispatch on the config's `train.loss` ('mse' | 'xent'). → (K,)."""
    if kind == "mse":
        return mse_loss(output, target)
    if kind == "xent":
        return xent_loss(output, label)
    raise ValueError(f"train.loss: must be one of mse, xent (got {kind!r})")


def loss_convention(kind: str, n_outputs: int) -> str:
    """How the logged losses (train_loss, test_loss) are normalized, in words, with the factor that
    turns them into the authors' convention (their code sums the squared error over the outputs)."""
    if kind == "mse" and n_outputs == 1:
        return "MSE, the mean over the batch (one output: the paper's code's sum over outputs is the same)"
    if kind == "mse":
        return (
            f"MSE, the mean over batch × {n_outputs} outputs; "
            f"the paper's code sums over the outputs: multiply by {n_outputs} to compare"
        )
    if kind == "xent":
        return "cross-entropy (natural log), the mean over the batch"
    raise ValueError(f"train.loss: must be one of mse, xent (got {kind!r})")


def accuracy(output: Tensor, label: Tensor) -> Tensor:
    """Fraction of points whose argmax output is the label. output (K, B, C), label (B,) → (K,)."""
    return (output.argmax(dim=-1) == label).to(output.dtype).mean(dim=-1)


def loss_output_derivatives(
    kind: str, output: Tensor, target: Tensor, label: Tensor
) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """The loss's first and second derivatives in the network's output, for hand-written
    Hessian-vector products (engine.mlp.MLP.hvp_operator): ∂L_k/∂f (K, B, C), and the map u ↦
    (∂²L_k/∂f²) u on (K, B, C) (per point: the loss is a mean of per-point terms). Same conventions as
    loss_fn: MSE the mean over batch × classes, cross-entropy the mean over the batch."""
    if kind == "mse":
        n = output.shape[-2] * output.shape[-1]
        return 2.0 * (output - target) / n, lambda u: (2.0 / n) * u
    if kind == "xent":
        batch = output.shape[-2]
        p = torch.softmax(output, dim=-1)  # (K, B, C)
        onehot = torch.nn.functional.one_hot(label, output.shape[-1]).to(output.dtype)
        # softmax's Hessian per point: diag(p) − p pᵀ
        return (p - onehot) / batch, lambda u: (p * u - p * (p * u).sum(-1, keepdim=True)) / batch
    raise ValueError(f"train.loss: must be one of mse, xent (got {kind!r})")


# ----------------------------------------------------------------------------- kernels


def feature_kernel(features: Tensor) -> Tensor:
    """Gram matrix of last-layer features Φ Φᵀ. features (K, P, F) → (K, P, P)."""
    return features @ features.transpose(-1, -2)


def _center(kernel: Tensor) -> Tensor:
    """H K H with H = I − 11ᵀ/P: subtract row and column means, add back the grand mean. (..., P, P)."""
    row = kernel.mean(dim=-1, keepdim=True)
    col = kernel.mean(dim=-2, keepdim=True)
    grand = kernel.mean(dim=(-2, -1), keepdim=True)
    return kernel - row - col + grand


def kernel_alignment(kernel: Tensor, target: Tensor, centered: bool = False) -> Tensor:
    """Kernel–target alignment ⟨K, YYᵀ⟩_F / (‖K‖_F ‖YYᵀ‖_F); centered=True gives CKA (both centered).

    kernel (K, P, P) (or (P, P)), target (P, C) → (K,) (or scalar). A zero kernel gives NaN
    (alignment is undefined there), which is stored as is.
    """
    yy = target @ target.transpose(-1, -2)  # (P, P)
    if centered:
        kernel, yy = _center(kernel), _center(yy)
    inner = (kernel * yy).sum(dim=(-2, -1))
    return inner / (kernel.flatten(-2).norm(dim=-1) * yy.norm())


def empirical_ntk(fn: Callable[[Params, Tensor], Tensor], params: Params, x: Tensor, chunk: int = 1) -> Tensor:
    """Class-summed empirical NTK Θ(x, x') = Σ_c ∂f_c(x)/∂θ · ∂f_c(x')/∂θ for every member.

    fn(params_one, x) → (P, C) is one member's output; params holds stacked (K, ...) tensors;
    x (P, ...) is the probe. Returns (K, P, P). Costs P·C backward passes per member (jacrev), so keep
    P small (≤ 64); members run `chunk` at a time under vmap to bound memory (P·C·n_params each).
    """
    k_total = next(iter(params.values())).shape[0]
    out = []

    def one(p: Params) -> Tensor:
        jac = torch.func.jacrev(fn)(p, x)  # name -> (P, C, *shape)
        total = None
        for j in jac.values():
            flat = j.flatten(2)  # (P, C, n)
            part = torch.einsum("pcn,qcn->pq", flat, flat)
            total = part if total is None else total + part
        assert total is not None
        return total

    for start in range(0, k_total, chunk):
        sub = {n: t[start : start + chunk] for n, t in params.items()}
        out.append(torch.func.vmap(one)(sub))
    return torch.cat(out)


# ----------------------------------------------------------------------------- sharpness


HVP = Callable[[Params], Params]  # v ↦ H v per member, stacked params (K, ...) in and out


def autograd_hvp(loss: Callable[[Params], Tensor], params: Params) -> HVP:
    """Every member's Hessian-vector product by double backward through loss(params) → (K,) per-member
    losses. Members are independent, so the Hessian of Σ_k loss_k is block-diagonal and one
    double-backward gives every member's H_k v_k. The loss's graph is built once here and kept for
    the returned operator's calls (any architecture; the MLP has a cheaper hand-written one,
    engine.mlp.MLP.hvp_operator)."""
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    with torch.enable_grad():
        grads = torch.autograd.grad(loss(leaves).sum(), list(leaves.values()), create_graph=True)

    def hvp(v: Params) -> Params:
        hv = torch.autograd.grad(grads, list(leaves.values()), grad_outputs=[v[n] for n in leaves], retain_graph=True)
        return {n: t.detach() for n, t in zip(leaves, hv, strict=True)}

    return hvp


def top_hessian_eigenvalue(
    loss: Callable[[Params], Tensor] | None,
    params: Params,
    iters: int = 20,
    init: Params | None = None,
    generator: torch.Generator | None = None,
    *,
    hvp: HVP | None = None,
) -> tuple[Tensor, Params]:
    """Top eigenvalue of each member's loss Hessian by power iteration on Hessian-vector products.

    loss(params) → (K,) per-member losses of stacked params (K, ...), differentiated twice by autograd
    (autograd_hvp); or `hvp`, a Hessian-vector operator of the same loss (loss then unused).
    Power iteration converges to the eigenvalue of largest magnitude; for a loss near a minimum or on
    the edge of stability that is the top (positive) one. `init` warm-starts from a previous vector
    (pass the returned one back: a few iterations then suffice between nearby checkpoints).
    Returns (eigenvalue (K,), unit vector per member).
    """
    hvp, k, v = _hvp_start(loss, params, init, generator, hvp)
    eig = torch.zeros(k, dtype=v[next(iter(v))].dtype, device=v[next(iter(v))].device)
    for _ in range(iters):
        hv = hvp(v)
        eig = _dot(v, hv, k)  # Rayleigh quotient vᵀHv (v is unit)
        v = unit_vectors(hv, k)
    return eig.detach(), v


def top_hessian_eigenvalue_lanczos(
    loss: Callable[[Params], Tensor] | None,
    params: Params,
    max_iters: int = 30,
    init: Params | None = None,
    generator: torch.Generator | None = None,
    tol: float = 1e-3,
    *,
    hvp: HVP | None = None,
    restrict: Callable[[Tensor], HVP] | None = None,
) -> tuple[Tensor, Params, int]:
    """Top (largest) eigenvalue of each member's loss Hessian by Lanczos on Hessian-vector products.

    Same inputs as `top_hessian_eigenvalue`. Lanczos builds each member's Krylov space from its start
    vector (one batched product per step serves every member, as above; each new Lanczos vector is
    orthogonalized against the two before it) and takes the top eigenvalue of the small tridiagonal matrix: more
    accurate than power iteration for the same number of products (its error falls at the Chebyshev
    rate of √gap rather than λ₂/λ₁, and it finds the largest eigenvalue, where power iteration finds
    the largest in magnitude: a negative one where the loss is far from convex; bench/sharpness.py).
    A member is done when its Ritz residual ‖H y − θ y‖ is at most tol·|θ| (the eigenvalue's error is
    then about tol²·θ²/gap: ~1e-4 relative for tol = 1e-2 and a gap of order θ), its Ritz value moved
    by at most 1e-3·tol·|θ| in the last step, or its Krylov space is exhausted; its eigenvalue and
    vector are those of that step, whatever the other members still need, so each member's result
    depends on its own parameters only (dropping or adding other members changes no bit of it).
    The products stop when every member is done, or after max_iters (then the members not done take
    that step's). Members with non-finite values (diverged) get NaN and do not hold up the rest.
    `restrict(positions)`, where given, builds the product of those members alone: once at most
    RESTRICT_AT of the members the product computes are still not done, the rest of the products run
    on those only (a done member's later steps change nothing of its result), so a few slow members
    no longer cost a product of the whole ensemble each.
    Returns (eigenvalue (K,), Ritz unit vector per member (the next call's `init`), products used).
    """
    hvp, k, v = _hvp_start(loss, params, init, generator, hvp)
    first = next(iter(v.values()))
    dtype, device = first.dtype, first.device
    # the Lanczos vectors, each with the rows (member positions) it holds: None for every member, or
    # the members still open when it was made, once the products are restricted to those
    basis: list[tuple[Tensor | None, Params]] = [(None, v)]
    alphas: list[Tensor] = []
    betas: list[Tensor] = []
    finite = torch.ones(k, dtype=torch.bool, device=device)
    settled = torch.zeros(k, dtype=torch.bool, device=device)  # members done at an earlier step
    eig = torch.full((k,), float("nan"), dtype=dtype, device=device)  # each member's result so far
    y_all = torch.zeros(k, max_iters, dtype=dtype, device=device)  # its Ritz vector's coefficients
    prev = torch.full((k,), float("inf"), dtype=dtype, device=device)
    op, computed = hvp, k  # the product in use and how many members it computes
    rows: Tensor | None = None  # their positions (None: every member); every step's work is on these
    for i in range(max_iters):
        if restrict is not None and i > 0:
            open_ = (~settled).nonzero().squeeze(1)
            if len(open_) <= RESTRICT_AT * computed:
                op, rows, computed = restrict(open_), open_, len(open_)
        n_rows = k if rows is None else len(rows)
        recent = [_rows_of(q, held, rows) for held, q in basis[-2:]]  # the last two vectors, these rows
        w = op(recent[-1])
        alpha = _dot(recent[-1], w, n_rows)
        # the three-term recurrence, orthogonalized against the last two Lanczos vectors twice
        # (Gram–Schmidt): not against every earlier one, which cost more than the products themselves
        # (a pass over each stored vector per step); the lost orthogonality that builds up once the
        # top Ritz value has converged only repeats converged values (Paige), it does not move the top
        for _ in range(2):
            for q in recent:
                w = _axpy(w, q, -_dot(q, w, n_rows), n_rows)
        beta = _dot(w, w, n_rows).sqrt()
        if rows is not None:  # the members done before: 0 (their later steps are never read)
            alpha = alpha.new_zeros(k).index_copy_(0, rows, alpha)
            beta = beta.new_zeros(k).index_copy_(0, rows, beta)
        finite &= torch.isfinite(alpha) | settled
        finite &= torch.isfinite(beta) | settled
        alphas.append(torch.where(finite & torch.isfinite(alpha), alpha, 0))  # eigh takes finite input only
        betas.append(torch.where(finite & torch.isfinite(beta), beta, 0))
        t = torch.diag_embed(torch.stack(alphas, dim=1))  # (K, m, m) tridiagonal
        if i > 0:
            off = torch.stack(betas[:-1], dim=1)
            t = t + torch.diag_embed(off, offset=1) + torch.diag_embed(off, offset=-1)
        theta, vecs = torch.linalg.eigh(t)
        top, y = theta[:, -1], vecs[:, :, -1]  # the top Ritz pair of this step
        residual = betas[-1] * y[:, -1].abs()
        scale = top.abs().clamp_min(torch.finfo(dtype).tiny)
        change = (top - prev).abs() <= 1e-3 * tol * scale  # the Ritz value has stopped moving
        prev = top
        done = ~finite | (residual <= tol * scale) | change | (betas[-1] <= torch.finfo(dtype).eps * scale)
        last = bool((done | settled).all()) or i == max_iters - 1
        take = ~settled & (done | last)  # members whose result is this step's
        eig = torch.where(take, top, eig)
        y_all[:, : i + 1] = torch.where(take.view(-1, 1), y, y_all[:, : i + 1])
        settled |= take
        if last:
            break
        own = betas[-1] if rows is None else betas[-1][rows]
        safe = torch.where(own > 0, own, 1)
        basis.append((rows, {n: t_ / safe.view(-1, *([1] * (t_.dim() - 1))) for n, t_ in w.items()}))
    ritz = {n: torch.zeros_like(t_) for n, t_ in v.items()}
    for j, (held, q) in enumerate(basis[: len(alphas)]):
        if held is None:
            ritz = _axpy(ritz, q, y_all[:, j], k)
        else:  # the same fused pass on those rows
            part = _axpy({n: t_[held] for n, t_ in ritz.items()}, q, y_all[held, j], len(held))
            for n in ritz:
                ritz[n].index_copy_(0, held, part[n])
    eig = torch.where(finite, eig, float("nan"))
    return eig.detach(), unit_vectors(ritz, k), len(alphas)


def _rows_of(q: Params, held: Tensor | None, rows: Tensor | None) -> Params:
    """The rows `rows` (member positions; None: every member) of a Lanczos vector holding the rows
    `held` (None: every member; else a sorted superset of rows)."""
    if rows is None:
        return q
    at = rows if held is None else torch.searchsorted(held, rows)
    if held is not None and len(held) == len(rows):
        return q
    return {n: t[at] for n, t in q.items()}


# top_hessian_eigenvalue_lanczos's restrict: a product of the members still open once they are at most
# this share of those the current product computes (building one costs about a product of them)
RESTRICT_AT = 0.75


def _axpy(a: Params, b: Params, c: Tensor, k: int) -> Params:
    """a + c·b per member, c (K,): one fused pass per tensor."""
    return {n: torch.addcmul(a[n], c.view(-1, *([1] * (b[n].dim() - 1))), b[n]) for n in a}


def _hvp_start(
    loss: Callable[[Params], Tensor] | None,
    params: Params,
    init: Params | None,
    generator: torch.Generator | None,
    hvp: HVP | None,
) -> tuple[HVP, int, Params]:
    """What both eigensolvers start from: the Hessian-vector operator (`hvp`, or autograd's on
    `loss`), K, and the unit start vector per member (`init`, or a random one)."""
    if hvp is None:
        if loss is None:
            raise ValueError("top_hessian_eigenvalue: give a loss or an hvp operator")
        hvp = autograd_hvp(loss, params)
    k = next(iter(params.values())).shape[0]
    if init is None:
        v = {n: torch.randn(p.shape, dtype=p.dtype, device=p.device, generator=generator) for n, p in params.items()}
    else:
        v = {n: t.clone() for n, t in init.items()}
    return hvp, k, unit_vectors(v, k)


def _dot(a: Params, b: Params, k: int) -> Tensor:
    """Σ a·b per member (K,)."""
    return sum(torch.linalg.vecdot(a[n].reshape(k, -1), b[n].reshape(k, -1)) for n in a)  # type: ignore[return-value]


def unit_vectors(v: Params, k: int) -> Params:
    """Each member's vector (stacked like params) scaled to unit length (a zero one stays zero)."""
    norm = _dot(v, v, k).sqrt().clamp_min(torch.finfo(next(iter(v.values())).dtype).tiny)  # (K,)
    return {n: t / norm.view(-1, *([1] * (t.dim() - 1))) for n, t in v.items()}


# ----------------------------------------------------------------------------- movement


def movement(weight: Tensor, weight0: Tensor) -> Tensor:
    """Relative change ‖W − W(0)‖_F / ‖W(0)‖_F per member. weight, weight0 (K, ...) → (K,)."""
    k = weight.shape[0]
    return (weight - weight0).reshape(k, -1).norm(dim=1) / weight0.reshape(k, -1).norm(dim=1)
