"""The deep linear toy model: a scalar chain of L weights, its closed forms and a batched simulator.

Model (the paper's scalar chain, centered):   f(w) = (w_1 w_2 ⋯ w_L − w_1(0) ⋯ w_L(0)) / γ
trained by gradient descent with step η on the loss (f − y)²/2, target y = 1.

Init convention under which the closed forms below are exact statements: w_l(0) = 1 for every l
("ones"). Then f(0) = 0 (centering), the initial loss is 1/2, and the weights stay *balanced*
(all equal, w_l(t) = u(t)) for ever, because every ∂f/∂w_l = Π_{k≠l} w_k / γ is the same.

Why η_max has the form it has. The loss Hessian at a global minimum is ∇f ∇fᵀ (rank one), with
top eigenvalue  λ = |∇f|² = Σ_l (Π_{k≠l} w_k)² / γ².  On the minimum manifold Π w_l = 1 + γ the
flattest point is the balanced one (AM–GM), where w_l = (1+γ)^(1/L) and

    λ_min = L (1+γ)^(2 − 2/L) / γ²,    so GD converges there iff  η < 2/λ_min:

    η_max(γ, L) = 2 γ² / (L (1+γ)^(2 − 2/L)).

Balanced init reaches exactly that point, so this is the measured edge (tests check it). Limits:
    γ ≪ 1 (lazy):  η_max → 2γ²/L        — the NTK at init, L/γ², barely changes;
    γ ≫ 1 (rich):  η_max → (2/L) γ^(2/L) — the weights grow to γ^(1/L) and flatten the landscape.
γ^(2/L) is γ to the power 2/L, not γ²/L. The optimal rate η* is the Newton step at that minimum,
η* = 1/λ_min = η_max/2: ∝ γ² lazy, ∝ γ^(2/L) rich. From any other start with Π w_l(0) = P0 the
manifold is Π w_l = P0 + γ and the same argument bounds η_max by 2γ²/(L (P0+γ)^(2−2/L))
(`initial_product=P0`); an unbalanced start ends at a sharper minimum, below that bound (gradient
flow preserves w_l² − w_k²).

On the rich side, the loss sits on a plateau: u' ≈ (η/γ) u^(L−1) while u^L ≪ γ, so the escape
takes ~γ/η steps (the τ = η t/γ collapse of `engine.analysis`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.analysis import eta_max_bracket

__all__ = [
    "ChainRun",
    "default_steps",
    "eta_max_theory",
    "eta_star_theory",
    "measure_eta_max",
    "run_chain",
    "simulate_chain",
]

FORMS = ("smooth", "lazy", "rich")

# A cell whose loss has fallen below this fraction of its initial loss is frozen as converged:
# further steps only shrink the residual into subnormal floats, which are ~100x slower to compute
# and cannot change the outcome (an unstable orbit does not pass within 1e-20 of the target).
SETTLED = 1e-40


def _check_depth(L: int) -> None:
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        raise ValueError(f"L: the chain length must be an integer >= 1 (got {L!r})")


def _positive_array(name: str, value: float | np.ndarray) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name}: every value must be a finite number > 0")
    return arr


def eta_max_theory(
    gamma: float | np.ndarray, L: int, form: str = "smooth", *, initial_product: float = 1.0
) -> np.ndarray:
    """Largest convergent GD step of the balanced chain (module docstring), elementwise in γ.

    form: 'smooth' = 2γ²/(L(P0+γ)^(2−2/L)) (exact linear stability of the flattest minimum, the
    one reached from w(0) = 1 where P0 = Π w(0) = 1), 'lazy' = 2γ²/(L P0^(2−2/L)) (its γ ≪ P0
    asymptote, 2γ²/L for P0 = 1), 'rich' = (2/L)γ^(2/L) (its γ ≫ P0 asymptote).
    """
    _check_depth(L)
    g = _positive_array("gamma", gamma)
    p0 = float(_positive_array("initial_product", initial_product))
    power = 2.0 - 2.0 / L
    if form == "smooth":
        return 2.0 * g**2 / (L * (p0 + g) ** power)
    if form == "lazy":
        return 2.0 * g**2 / (L * p0**power)
    if form == "rich":
        return (2.0 / L) * g ** (2.0 / L)
    raise ValueError(f"form: must be one of {', '.join(FORMS)} (got {form!r})")


def eta_star_theory(
    gamma: float | np.ndarray, L: int, form: str = "smooth", *, initial_product: float = 1.0
) -> np.ndarray:
    """The toy's optimal rate, η* = η_max/2 (a Newton step at the reached minimum): γ²/L lazy,
    γ^(2/L)/L rich. For real networks only the exponents (2 lazy, 2/L rich) carry over."""
    return 0.5 * eta_max_theory(gamma, L, form, initial_product=initial_product)


# ----------------------------------------------------------------------------- simulator


@dataclass(frozen=True)
class ChainRun:
    """Outcome of a batched chain simulation over a broadcast (γ, η) shape S.

    losses: (*S, steps+1) — losses[..., t] is the loss after t updates (= before update t);
        +inf from the step a cell diverged onwards. None when not kept.
    final_loss: (*S,); diverged: (*S,) bool — blew up (non-finite, or loss > divergence_factor ×
        initial loss); diverged_step: (*S,) int, the first update whose result blew up, -1 if none.
    unsettled: (*S,) bool — not diverged, not converged, and the loss rose at some step: GD
        overshot and has not settled since (period-2 or chaotic orbits just above the stability
        edge, or a throw onto the saddle at w ≈ 0, where ∂f/∂w vanishes and GD stalls). A cell
        still on the rich plateau (small η) is neither: its loss falls monotonically, only slowly.
    """

    losses: np.ndarray | None
    final_loss: np.ndarray
    diverged: np.ndarray
    diverged_step: np.ndarray
    unsettled: np.ndarray


def _initial_weights(init: str | np.ndarray, shape: tuple[int, ...], L: int) -> np.ndarray:
    if isinstance(init, str):
        if init != "ones":
            raise ValueError(f"init: must be 'ones' or an array of weights with last axis L={L} (got {init!r})")
        return np.ones((*shape, L))
    w0 = np.asarray(init, dtype=np.float64)
    if w0.ndim == 0 or w0.shape[-1] != L:
        raise ValueError(f"init: the last axis must hold the L={L} weights (got shape {w0.shape})")
    if not np.all(np.isfinite(w0)):
        raise ValueError("init: weights must be finite")
    try:
        return np.broadcast_to(w0, (*shape, L)).copy()
    except ValueError:
        raise ValueError(f"init: shape {w0.shape} does not broadcast to the (γ, η) shape {shape} + (L,)") from None


def _products(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Π_l w_l (*S,) and Π_{k≠l} w_k (*S, L) by prefix/suffix products (no division: w_l may be 0)."""
    ones = np.ones((*w.shape[:-1], 1))
    prefix = np.cumprod(np.concatenate([ones, w[..., :-1]], axis=-1), axis=-1)  # Π_{k<l}
    suffix = np.cumprod(np.concatenate([ones, w[..., :0:-1]], axis=-1), axis=-1)[..., ::-1]  # Π_{k>l}
    return prefix[..., -1] * w[..., -1], prefix * suffix


def run_chain(
    gamma: float | np.ndarray,
    eta: float | np.ndarray,
    L: int,
    steps: int,
    init: str | np.ndarray = "ones",
    *,
    target: float = 1.0,
    centered: bool = True,
    divergence_factor: float = 1e3,
    converge_tol: float = 1e-8,
    keep_losses: bool = True,
) -> ChainRun:
    """Full-batch GD on f = (Π w − Π w(0))/γ (or Π w/γ uncentered), loss (f − target)²/2.

    gamma, eta broadcast to a shape S; every cell runs at once in float64. init: 'ones' (the
    convention of the closed forms) or weights broadcastable to (*S, L). A cell counts as converged
    when its final loss ≤ converge_tol × initial loss.
    """
    _check_depth(L)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: must be an integer >= 1 (got {steps!r})")
    g = _positive_array("gamma", gamma)
    lr = _positive_array("eta", eta)
    shape = np.broadcast_shapes(g.shape, lr.shape)
    g, lr = np.broadcast_to(g, shape), np.broadcast_to(lr, shape)
    w = _initial_weights(init, shape, L)  # (*S, L)
    offset = _products(w)[0] if centered else np.zeros(shape)  # (*S,) Π w(0)

    def loss_and_residual(prod: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        residual = (prod - offset) / g - target  # (*S,) f − y
        return 0.5 * residual**2, residual

    prod, others = _products(w)
    loss, residual = loss_and_residual(prod)
    initial = loss.copy()
    blowup_level = divergence_factor * np.maximum(initial, np.finfo(np.float64).tiny)
    losses = np.empty((*shape, steps + 1)) if keep_losses else None
    if losses is not None:
        losses[..., 0] = loss
    settled_level = SETTLED * initial
    alive = np.ones(shape, dtype=bool)
    settled = alive & (loss <= settled_level)
    diverged_step = np.full(shape, -1, dtype=np.int64)
    rose = np.zeros(shape, dtype=bool)
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        for t in range(steps):
            moving = alive & ~settled
            if not moving.any():  # nothing left to update: the rest of the series is constant
                if losses is not None:
                    losses[..., t + 1 :] = loss[..., None]
                break
            grad = (residual / g)[..., None] * others  # (*S, L) ∂loss/∂w_l = (f−y) Π_{k≠l} w_k / γ
            w_new = w - lr[..., None] * grad
            prod_new, others_new = _products(w_new)
            loss_new, residual_new = loss_and_residual(prod_new)
            blew_up = moving & ~(np.isfinite(loss_new) & (loss_new <= blowup_level))
            diverged_step[blew_up] = t
            alive &= ~blew_up
            moving &= ~blew_up
            # Dead and settled cells keep their last finite state: no inf/NaN feeds later arithmetic.
            # A relative margin so that round-off on a flat plateau does not count as a rise.
            rose |= moving & (loss_new > loss * (1.0 + 1e-9))
            w = np.where(moving[..., None], w_new, w)
            others = np.where(moving[..., None], others_new, others)
            residual = np.where(moving, residual_new, residual)
            loss = np.where(alive, np.where(moving, loss_new, loss), np.inf)
            settled |= alive & (loss <= settled_level)
            if losses is not None:
                losses[..., t + 1] = loss
    converged = alive & (loss <= converge_tol * initial)
    return ChainRun(
        losses=losses,
        final_loss=loss,
        diverged=~alive,
        diverged_step=diverged_step,
        unsettled=alive & ~converged & rose,
    )


def simulate_chain(
    gamma: float | np.ndarray, eta: float | np.ndarray, L: int, steps: int, init: str | np.ndarray = "ones"
) -> np.ndarray:
    """Losses (*S, steps+1) of the centered chain for every broadcast (γ, η) cell; +inf once diverged."""
    losses = run_chain(gamma, eta, L, steps, init).losses
    assert losses is not None
    return losses


def default_steps(gamma: float, L: int) -> int:
    """Enough GD steps to decide convergence near η_max.

    Lazy side (γ ≤ 1): at η ≈ η_max one step moves f by O(1), so a few thousand steps settle even
    cells within 1 % of the edge (contraction |1 − ηλ| ≈ 0.98). Rich side: u' ≈ (η/γ) u^(L−1)
    escapes the plateau after (γ/η)/(L−2) steps for L ≥ 3 (finite-time blow-up), (γ/η) ln γ^(1/2)
    for L = 2 (exponential growth), at once for L = 1 (a linear model); we allow 20 times that at
    η = η_max.
    """
    _check_depth(L)
    if gamma <= 1.0 or L == 1:
        return 2_000
    time_unit = gamma / float(eta_max_theory(gamma, L))
    plateau = time_unit * (1.0 + math.log(gamma)) if L == 2 else time_unit / (L - 2)
    return int(min(200_000, 2_000 + math.ceil(20.0 * plateau)))


def measure_eta_max(
    gamma: float | np.ndarray,
    L: int,
    etas: np.ndarray,
    *,
    steps: int | None = None,
    refine: int = 0,
    init: str | np.ndarray = "ones",
) -> np.ndarray:
    """Measured η_max of the chain for each γ: (n_γ,) float64, NaN where the smallest η fails.

    All (γ, η) cells run as one batch. A cell *fails* when it diverges or is unsettled
    (`ChainRun`); cells still on a slow plateau do not fail — they are below the edge.
    η_max per γ is `engine.analysis.eta_max` on that grid (largest passing η below the first
    failure), then `refine` bisection rounds in ln η between it and the first failure. steps:
    None picks `default_steps` of the largest γ.
    """
    gammas = np.atleast_1d(_positive_array("gamma", gamma))
    grid = np.sort(_positive_array("etas", etas).ravel())
    if grid.size < 2:
        raise ValueError("etas: need at least 2 η values to locate an edge")
    if isinstance(refine, bool) or not isinstance(refine, int) or refine < 0:
        raise ValueError(f"refine: must be an integer >= 0 (got {refine!r})")
    n_steps = steps if steps is not None else max(default_steps(float(g), L) for g in gammas)

    def fails(g: np.ndarray, e: np.ndarray) -> np.ndarray:
        run = run_chain(g, e, L, n_steps, init, keep_losses=False)
        return run.diverged | run.unsettled

    failed = fails(gammas[:, None], grid[None, :])  # (n_γ, n_η)
    lower = np.full(gammas.shape, np.nan)
    upper = np.full(gammas.shape, np.nan)
    for k in range(gammas.size):
        lo, hi = eta_max_bracket(grid, failed[k])
        lower[k] = np.nan if lo is None else lo
        upper[k] = np.nan if hi is None else hi
    # Bisect only rows with both ends of the bracket on the grid.
    bracketed = np.isfinite(lower) & np.isfinite(upper)
    for _ in range(refine):
        if not bracketed.any():
            break
        mid = np.sqrt(lower[bracketed] * upper[bracketed])
        bad = fails(gammas[bracketed], mid)
        lo_b, hi_b = lower[bracketed], upper[bracketed]
        lower[bracketed] = np.where(bad, lo_b, mid)
        upper[bracketed] = np.where(bad, mid, hi_b)
    return lower
