"""Analysis of a γ–η sweep: η*, η_max, power-law fits, time reparameterizations, curve collapse.

Pure numpy, no I/O: the dashboard and the physics tests call these on arrays they already hold.
Inputs are 1-D arrays over an η grid (one γ at a time) or lists of (τ, loss) curves.
The deep-linear toy model's closed forms live in `engine.toy` and are re-exported here.

Definitions (the paper's, made precise where a grid forces a choice):

- η*  : the η minimising the loss, refined by a parabola through log-loss vs log-η at the grid
        minimum and its two neighbours; never extrapolated outside that bracket.
- η_max: the largest non-diverged η below the smallest diverged η. Stable "islands" above the first
        divergence (a non-monotone grid, usually seed noise at the edge) are ignored: η_max is the
        top of the contiguous stable range that starts at the bottom of the grid.
- collapse score: mean over a common log-spaced τ grid of the across-curve standard deviation of
        ln(loss) — 0 for a perfect overlay; 0.1 means the curves spread by about ±10 %.
- tail statistic (`tail_train_loss`, the default for η* and the fits): the mean train loss over the
        last TAIL_FRACTION of the steps. The last batch alone (64 samples) is one noisy draw: on an
        L = 3 sweep its ridge slope was 0.58 ± 0.25, the tail mean's 0.596 ± 0.017 (issue 11).
- grid uncertainty: an η read off a log grid (η_max, or η* at a grid point) is only known to within
        its grid cell; modelled as uniform over one ln-spacing Δ, i.e. a standard error of Δ/√12 in
        ln η per point, which `fit_power_law(..., y_spacing=Δ)` carries into the slope.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_STATISTIC",
    "REPARAMETERIZATIONS",
    "TAIL_FRACTION",
    "DROP_HELD",
    "CollapseScore",
    "EtaStar",
    "PowerLawFit",
    "collapse_score",
    "eta_max",
    "eta_max_bracket",
    "eta_star",
    "fit_power_law",
    "grid_spacing",
    "reparameterize",
    "tail_mean",
    "tail_steps",
]

REPARAMETERIZATIONS = ("t", "eta_t", "eta_t_over_gamma", "eta_t_over_gamma_2_over_L")
TAIL_FRACTION = 0.1  # the tail statistic averages the last 10 % of the steps
DEFAULT_STATISTIC = "tail_train_loss"  # the run summary key η* and the fits read by default
UNIFORM_STD = 1.0 / math.sqrt(12.0)  # std of a uniform distribution of unit width


# ----------------------------------------------------------------------------- the tail statistic


def tail_steps(steps: int, fraction: float = TAIL_FRACTION) -> int:
    """How many of a run's last steps the tail statistic averages: ceil(fraction·steps), at least 1."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: must be an integer >= 1 (got {steps!r})")
    if not (isinstance(fraction, int | float) and 0 < fraction <= 1):
        raise ValueError(f"fraction: must be a number in (0, 1] (got {fraction!r})")
    return max(1, math.ceil(fraction * steps - 1e-9))


def tail_mean(losses: Sequence[float] | np.ndarray, fraction: float = TAIL_FRACTION) -> float:
    """Mean of the last `tail_steps(len(losses), fraction)` values of one loss series (T,).
    Non-finite when the tail holds a non-finite value (a diverged run has no tail statistic)."""
    series = _as_1d("losses", losses)
    if series.size == 0:
        raise ValueError("losses: the series is empty")
    return float(series[-tail_steps(int(series.size), fraction) :].mean())


def grid_spacing(values: Sequence[float] | np.ndarray) -> float:
    """The largest ln-spacing between neighbouring distinct grid values: how far apart in ln η two
    grid points are, the resolution of any η read off that grid (0 for fewer than two values)."""
    v = np.unique(_as_1d("values", values))
    v = v[np.isfinite(v) & (v > 0)]
    return float(np.diff(np.log(v)).max()) if v.size > 1 else 0.0


# ----------------------------------------------------------------------------- input checks


def _as_1d(name: str, values: Sequence[float] | np.ndarray, dtype: type = np.float64) -> np.ndarray:
    arr: np.ndarray = np.asarray(values, dtype=dtype)
    if arr.ndim != 1:
        raise ValueError(f"{name}: must be a 1-D array (got shape {arr.shape})")
    return arr


def _check_eta_grid(etas: Sequence[float] | np.ndarray, other: np.ndarray, other_name: str) -> np.ndarray:
    eta = _as_1d("etas", etas)
    if eta.size == 0:
        raise ValueError("etas: the η grid is empty")
    if eta.shape != other.shape:
        raise ValueError(f"{other_name}: must have one entry per η (got {other.size} for {eta.size} etas)")
    if not np.all(np.isfinite(eta)) or np.any(eta <= 0):
        raise ValueError(f"etas: every η must be a finite number > 0 (got {eta.tolist()})")
    if np.unique(eta).size != eta.size:
        raise ValueError("etas: the η grid has repeated values; aggregate seeds before calling")
    return eta


# ----------------------------------------------------------------------------- η*


@dataclass(frozen=True)
class EtaStar:
    """The loss-minimising η of one γ row.

    value:  η* (None when every loss is non-finite); index: the grid minimum's position in the
    caller's (unsorted) arrays; method: 'fitted' (parabola vertex), 'grid' (the grid minimum itself)
    or 'none'; reason: why that method was used, in words for a tooltip.
    """

    value: float | None
    index: int | None
    method: str
    reason: str


def eta_star(etas: Sequence[float] | np.ndarray, losses: Sequence[float] | np.ndarray) -> EtaStar:
    """η* by a parabolic fit of ln(loss) against ln(η) around the grid minimum.

    etas: (n,) distinct positive η values in any order. losses: (n,) the loss of each cell (final or
    best, seed-aggregated); NaN/inf mark diverged cells. The fit uses the minimum and its two grid
    neighbours; it falls back to the grid minimum when the minimum sits at an edge of the grid, a
    neighbour is diverged, a loss is not positive, or the three points are not convex. The vertex
    is clipped to the bracket [η_{i-1}, η_{i+1}]: we never extrapolate beyond the measured points.
    """
    loss = _as_1d("losses", losses)
    eta = _check_eta_grid(etas, loss, "losses")
    order = np.argsort(eta)
    eta_s, loss_s = eta[order], loss[order]  # (n,) sorted by η
    finite = np.isfinite(loss_s)
    if not finite.any():
        return EtaStar(None, None, "none", "every cell diverged or has no loss")
    i = int(np.argmin(np.where(finite, loss_s, np.inf)))
    grid_value, index = float(eta_s[i]), int(order[i])

    def grid(reason: str) -> EtaStar:
        return EtaStar(grid_value, index, "grid", reason)

    if i == 0 or i == eta_s.size - 1:
        return grid("minimum at the edge of the η grid: η* may lie outside it")
    trio = loss_s[i - 1 : i + 2]  # (3,)
    if not np.all(np.isfinite(trio)):
        return grid("a neighbour of the minimum diverged")
    if np.any(trio <= 0):
        return grid("a loss at the minimum is not positive: no log-fit")
    x, y = np.log(eta_s[i - 1 : i + 2]), np.log(trio)
    if not np.all(np.diff(x) > 0):  # distinct floats can still share a logarithm
        return grid("neighbouring η values are too close to fit a parabola")
    # Exact parabola through three points with non-uniform spacing (divided differences).
    slope_left = (y[1] - y[0]) / (x[1] - x[0])
    slope_right = (y[2] - y[1]) / (x[2] - x[1])
    curvature = (slope_right - slope_left) / (x[2] - x[0])  # the x² coefficient
    if not curvature > 0:
        return grid("the three points around the minimum are not convex in log-log")
    # y = y0 + slope_left (x - x0) + curvature (x - x0)(x - x1)  ⇒  y' = 0 at:
    vertex = 0.5 * (x[0] + x[1]) - slope_left / (2.0 * curvature)
    if not math.isfinite(vertex):
        return grid("the parabola fit is numerically degenerate")
    vertex = float(np.clip(vertex, x[0], x[2]))
    return EtaStar(math.exp(vertex), index, "fitted", "parabola through the minimum and its two neighbours")


# ----------------------------------------------------------------------------- η_max


def eta_max_bracket(
    etas: Sequence[float] | np.ndarray, diverged: Sequence[bool] | np.ndarray
) -> tuple[float | None, float | None]:
    """(largest stable η below the first divergence, smallest diverged η) of one γ row.

    Either side is None when the grid does not reach it: (None, η_0) when the smallest η already
    diverged, (max η, None) when nothing diverged (then the true η_max is only bounded below).
    """
    div = _as_1d("diverged", diverged, dtype=bool)
    eta = _check_eta_grid(etas, div, "diverged")
    order = np.argsort(eta)
    eta_s, div_s = eta[order], div[order]
    if not div_s.any():
        return float(eta_s[-1]), None
    first = int(np.argmax(div_s))  # index of the smallest diverged η
    upper = float(eta_s[first])
    return (float(eta_s[first - 1]) if first > 0 else None), upper


def eta_max(etas: Sequence[float] | np.ndarray, diverged: Sequence[bool] | np.ndarray) -> float | None:
    """The largest non-diverged η below the smallest diverged η (None if the smallest η diverged).

    etas: (n,) distinct positive η in any order; diverged: (n,) bool per cell (for several seeds
    pass e.g. "any seed diverged" or "majority diverged" — the caller's choice). With no diverged
    cell this is the largest η of the grid, a lower bound on the true η_max; use
    `eta_max_bracket` to tell the two apart. Stable cells above the first divergence are ignored.
    """
    return eta_max_bracket(etas, diverged)[0]


# ----------------------------------------------------------------------------- power laws


@dataclass(frozen=True)
class PowerLawFit:
    """y ≈ prefactor · x^slope, fitted by least squares of ln y on ln x over n usable points.

    slope_stderr is the ordinary-least-squares standard error of the slope (NaN when n = 2: two
    points fix a line exactly and leave no residual to estimate the noise). r2 is in ln-space.
    grid_stderr: the slope's standard error from reading each y off a grid of ln-spacing Δ (each
    ln y uniform within Δ: std Δ/√12, propagated through the least-squares weights); 0 when no
    spacing was given. total_stderr combines both in quadrature.
    """

    slope: float
    slope_stderr: float
    prefactor: float
    r2: float
    n: int
    grid_stderr: float = 0.0

    @property
    def total_stderr(self) -> float:
        """√(slope_stderr² + grid_stderr²); the grid term alone when n = 2 (no residual to use)."""
        if not math.isfinite(self.slope_stderr):
            return self.grid_stderr if self.grid_stderr > 0 else math.nan
        return math.hypot(self.slope_stderr, self.grid_stderr)

    def predict(self, x: float | np.ndarray) -> np.ndarray:
        return self.prefactor * np.asarray(x, dtype=np.float64) ** self.slope


def fit_power_law(
    x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *, y_spacing: float = 0.0
) -> PowerLawFit:
    """Fit y = a·x^s in log-log. Points with a non-finite or non-positive x or y are ignored.

    y_spacing: the ln-spacing Δ of the grid the y values were read from (`grid_spacing`), 0 for
    values not quantised by a grid; it sets `grid_stderr`."""
    xs, ys = _as_1d("x", x), _as_1d("y", y)
    if xs.shape != ys.shape:
        raise ValueError(f"y: must have one entry per x (got {ys.size} for {xs.size})")
    keep = np.isfinite(xs) & np.isfinite(ys) & (xs > 0) & (ys > 0)
    n = int(keep.sum())
    if n < 2:
        raise ValueError(f"fit_power_law needs at least 2 points with finite x > 0 and y > 0 (got {n})")
    lx, ly = np.log(xs[keep]), np.log(ys[keep])  # (n,)
    dx = lx - lx.mean()
    sxx = float(dx @ dx)
    if sxx == 0.0:
        raise ValueError("x: all usable points have the same x; a slope needs at least two distinct x")
    slope = float(dx @ (ly - ly.mean())) / sxx
    intercept = float(ly.mean() - slope * lx.mean())
    resid = ly - (intercept + slope * lx)
    ssr = float(resid @ resid)
    dy = ly - ly.mean()
    sst = float(dy @ dy)
    r2 = 1.0 - ssr / sst if sst > 0 else 1.0
    stderr = math.sqrt(ssr / (n - 2) / sxx) if n > 2 else math.nan
    if not (math.isfinite(y_spacing) and y_spacing >= 0):
        raise ValueError(f"y_spacing: must be a finite number >= 0 (got {y_spacing!r})")
    # slope = Σ dx_i ln y_i / Sxx: independent per-point errors σ add as σ·√(Σ dx_i²)/Sxx = σ/√Sxx
    grid_err = y_spacing * UNIFORM_STD / math.sqrt(sxx)
    return PowerLawFit(
        slope=slope, slope_stderr=stderr, prefactor=math.exp(intercept), r2=r2, n=n, grid_stderr=grid_err
    )


# ----------------------------------------------------------------------------- time variables


def reparameterize(
    t: Sequence[float] | np.ndarray, eta: float, gamma: float, L: int, kind: str
) -> np.ndarray:
    """Map steps t to a time variable τ for overlays.

    kind: 't' (τ = t), 'eta_t' (η·t), 'eta_t_over_gamma' (η·t/γ — the rich-regime plateau escape
    time scales as γ/η, so large-γ curves collapse on it) or 'eta_t_over_gamma_2_over_L'
    (η·t/γ^(2/L), γ to the power 2/L: time in units of the rich-side η* ∝ γ^(2/L)).
    η is the swept raw rate (not width·η). t: (T,) steps; returns (T,) float64.
    """
    if kind not in REPARAMETERIZATIONS:
        raise ValueError(f"kind: must be one of {', '.join(REPARAMETERIZATIONS)} (got {kind!r})")
    for name, value in (("eta", eta), ("gamma", gamma)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name}: must be a finite number > 0 (got {value!r})")
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        raise ValueError(f"L: the depth must be an integer >= 1 (got {L!r})")
    steps = np.asarray(t, dtype=np.float64)
    if kind == "t":
        return steps.copy()
    if kind == "eta_t":
        return eta * steps
    if kind == "eta_t_over_gamma":
        return eta * steps / gamma
    return eta * steps / gamma ** (2.0 / L)


# ----------------------------------------------------------------------------- collapse


# The shared τ range "holds the drop" when the median curve falls below this fraction across it; a
# range that holds only the plateau collapses under any axis and says little (issue 11).
DROP_HELD = 0.5


@dataclass(frozen=True)
class CollapseScore:
    """score: mean over the τ grid of the across-curve std of ln(loss) (lower = tighter).
    tau_min/tau_max: the common range compared; n_curves: curves that took part. drop: the median
    over curves of loss(tau_max)/loss(tau_min) — below DROP_HELD the range holds the loss's drop."""

    score: float
    tau_min: float
    tau_max: float
    n_curves: int
    drop: float = math.nan

    @property
    def holds_drop(self) -> bool:
        return self.drop < DROP_HELD

    def range_text(self) -> str:
        """The shared range, the curve count and whether the drop is in it, for a table beside the score."""
        held = f"holds the drop (×{self.drop:.2g})" if self.holds_drop else (
            f"holds NO drop (×{self.drop:.2g}: plateau only, the score says little)")
        return f"τ ∈ [{self.tau_min:.3g}, {self.tau_max:.3g}], {self.n_curves} curves; the range {held}"


def collapse_score(
    curves: Sequence[tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray]],
    *,
    n_grid: int = 64,
) -> CollapseScore:
    """How tightly loss curves overlay once plotted against a time variable τ.

    curves: a list of (τ, loss) pairs, each two (T_i,) arrays (τ from `reparameterize`). Points
    with non-finite or non-positive τ or loss are dropped (a diverged tail, the τ = 0 step). Each
    curve is interpolated linearly in (ln τ, ln loss) onto `n_grid` log-spaced τ points spanning
    the range all curves cover; the score is the mean over that grid of the population std of
    ln(loss) across curves. Curves that are exact time-rescalings of one another score ≈ 0
    (interpolation error only) under the right τ.
    """
    if len(curves) < 2:
        raise ValueError(f"curves: need at least 2 curves to compare (got {len(curves)})")
    if isinstance(n_grid, bool) or not isinstance(n_grid, int) or n_grid < 2:
        raise ValueError(f"n_grid: must be an integer >= 2 (got {n_grid!r})")
    cleaned: list[tuple[np.ndarray, np.ndarray]] = []
    for k, (tau, loss) in enumerate(curves):
        tau_a, loss_a = _as_1d(f"curves[{k}] tau", tau), _as_1d(f"curves[{k}] loss", loss)
        if tau_a.shape != loss_a.shape:
            raise ValueError(f"curves[{k}]: tau and loss differ in length ({tau_a.size} vs {loss_a.size})")
        keep = np.isfinite(tau_a) & np.isfinite(loss_a) & (tau_a > 0) & (loss_a > 0)
        if keep.sum() < 2:
            raise ValueError(f"curves[{k}]: fewer than 2 points with finite τ > 0 and loss > 0")
        lt, ll = np.log(tau_a[keep]), np.log(loss_a[keep])
        order = np.argsort(lt, kind="stable")
        lt, ll = lt[order], ll[order]
        if np.any(np.diff(lt) == 0):
            raise ValueError(f"curves[{k}]: repeated τ values; τ must be distinct within a curve")
        cleaned.append((lt, ll))
    lo = max(lt[0] for lt, _ in cleaned)
    hi = min(lt[-1] for lt, _ in cleaned)
    if not hi > lo:
        raise ValueError(
            "curves: the τ ranges do not overlap; pick a time variable under which the curves share a range"
        )
    grid = np.linspace(lo, hi, n_grid)  # (G,) in ln τ, i.e. log-spaced τ
    stacked = np.stack([np.interp(grid, lt, ll) for lt, ll in cleaned])  # (C, G)
    return CollapseScore(
        score=float(stacked.std(axis=0).mean()),
        tau_min=math.exp(lo),
        tau_max=math.exp(hi),
        n_curves=len(cleaned),
        drop=float(np.exp(np.median(stacked[:, -1] - stacked[:, 0]))),
    )
