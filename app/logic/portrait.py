"""What the phase portrait draws over the heatmap: the η*(γ) ridge, the η_max boundary, power-law
fits with slope ± standard error, and the theory lines γ² (lazy side) and γ^(2/L) (rich side)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from app.logic.figures import Curve
from app.logic.grid import CELL_STATUSES, HeatmapGrid
from engine import analysis

STATS = {
    "tail": "tail mean (last 10 %)",  # the mean of the last 10 % of steps (engine.analysis.tail_steps)
    "final": "final value",
    "best": "best value",
    "at_step": "value at step t",
    "steps_to": "steps to reach a threshold",
}
AGGS = ("mean", "median", "min")


@dataclass(frozen=True)
class FitLabel:
    """A fitted power law η = prefactor · γ^slope (engine.analysis.fit_power_law), its name and the
    slope theory predicts on its side of γ = 1 (None when the fit spans both)."""

    name: str
    fit: analysis.PowerLawFit
    theory: float | None = None
    left_out: int = 0  # points of its side not fitted: η* at the edge of the η grid (not bracketed)

    def label(self) -> str:
        """The slope ± its total error, then its two parts: the fit's scatter and the η grid's spacing."""

        def text(err: float) -> str:
            return "n/a" if not math.isfinite(err) else f"{err:.2f}"

        parts = f"fit ± {text(self.fit.slope_stderr)}, grid ± {text(self.fit.grid_stderr)}; "
        theory = "" if self.theory is None else f"; theory {self.theory:.3g}"
        edge = "" if not self.left_out else f"; {self.left_out} η* at the grid edge left out"
        total = text(self.fit.total_stderr)
        return f"{self.name}: slope {self.fit.slope:.2f} ± {total} ({parts}n={self.fit.n}{theory}{edge})"


# The two regimes of design.md §2 meet near γ = 1: lazy nets have η*, η_max ∝ γ², rich ones
# η* ∝ γ^(2/L). One straight line through both sides fits neither, so each side gets its own fit.
CROSSOVER_GAMMA = 1.0


# Values of one γ column that differ by no more than this (relative) do not separate its cells: the
# value at step t = 0 is the same at every η, and its "minimum" is whichever η comes first.
TIE_RTOL = 1e-6


@dataclass(frozen=True)
class Ridge:
    """η*(γ) per γ where the column's ok cells separate (not all tied). edge: (k,) bool, η* is the
    grid's first or last η (not bracketed: the true η* may lie outside the grid). tied: the γ whose
    ok cells all tie within TIE_RTOL (no η* drawn for them)."""

    gammas: np.ndarray  # (k,)
    etas: np.ndarray  # (k,)
    edge: np.ndarray  # (k,) bool
    tied: np.ndarray  # (m,)

    @property
    def bracketed(self) -> tuple[np.ndarray, np.ndarray]:
        return self.gammas[~self.edge], self.etas[~self.edge]


def _ties(values: np.ndarray) -> bool:
    """Whether two or more finite values all tie within TIE_RTOL (one value beside diverged cells is
    the best of its column; none is no column to speak of)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return False
    spread, scale = float(v.max() - v.min()), float(np.abs(v).max())
    return v.size > 1 and spread <= TIE_RTOL * scale


def ridge_points(grid: HeatmapGrid, *, lower_is_better: bool = True) -> Ridge:
    """η*(γ) per γ with ok cells that separate (engine.analysis.eta_star: parabola around the grid
    minimum). Only ok cells take part: other states are NaN. A column whose ok cells all tie has no
    η*; an η* at the grid's first or last η is flagged `edge`."""
    ok = grid.ok_values()  # (E, G)
    if not lower_is_better:  # an accuracy: minimise the error instead
        ok = 1.0 - ok
    gs, es, edge, tied = [], [], [], []
    last = grid.etas.size - 1
    for j, gamma in enumerate(grid.gammas):
        if _ties(ok[:, j]):
            tied.append(gamma)
            continue
        found = analysis.eta_star(grid.etas, ok[:, j])
        if found.value is not None:
            gs.append(gamma)
            es.append(found.value)
            edge.append(found.index in (0, last))
    return Ridge(
        np.asarray(gs, dtype=float),
        np.asarray(es, dtype=float),
        np.asarray(edge, dtype=bool),
        np.asarray(tied, dtype=float),
    )


STATE_NAMES = {"not_reached": "not reached"}  # caption words for grid.CELL_STATUSES


def status_counts(grid: HeatmapGrid) -> str:
    """The portrait caption's cell counts: ok, diverged, running and missing always; not reached
    (steps to a threshold) and cancelled only when some cell is, each apart from diverged/missing."""
    always = ("ok", "diverged", "running", "missing")
    parts = [f"{STATE_NAMES.get(s, s)}: {grid.count(s)}" for s in CELL_STATUSES if s in always or grid.count(s)]
    if grid.n_running is not None:  # seeds training in cells that already show a value (Add seeds)
        hidden = (grid.status != "running") & (grid.n_running > 0)
        if hidden.any():
            parts.append(f"{int(grid.n_running[hidden].sum())} more seed(s) training in {int(hidden.sum())} of them")
    return " · ".join(parts)


def ridge(grid: HeatmapGrid, *, lower_is_better: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """η*(γ) of ridge_points (edge points included). Returns (k,), (k,)."""
    found = ridge_points(grid, lower_is_better=lower_is_better)
    return found.gammas, found.etas


def ridge_notes(found: Ridge) -> list[str]:
    """What the caption says about the ridge: the γ left without η* because the statistic ties, and
    the η* that sit on the grid's edge (drawn apart, left out of the fits)."""

    def gammas(values: np.ndarray) -> str:
        return ", ".join(f"{g:.3g}" for g in values)

    notes = []
    if found.tied.size:
        notes.append(
            f"no η* for γ = {gammas(found.tied)}: the statistic does not separate the cells (equal "
            f"within {TIE_RTOL:g} at every η)"
        )
    if found.edge.any():
        notes.append(
            f"η* at the edge of the η grid (not bracketed; ◇) for γ = {gammas(found.gammas[found.edge])}: "
            "the true η* may lie outside the grid; left out of the fits"
        )
    return notes


def boundary(grid: HeatmapGrid) -> tuple[np.ndarray, np.ndarray]:
    """η_max(γ) per γ where the grid brackets it (a stable η below a diverged one); cells still
    running or missing are left out. Returns (k,), (k,)."""
    gs, es = [], []
    for j, gamma in enumerate(grid.gammas):
        col = grid.status[:, j]
        known = (col == "ok") | (col == "diverged")
        if known.sum() < 2:
            continue
        lower, upper = analysis.eta_max_bracket(grid.etas[known], col[known] == "diverged")
        if lower is not None and upper is not None:
            gs.append(gamma)
            es.append(lower)
    return np.asarray(gs), np.asarray(es)


def _fit(name: str, x: np.ndarray, y: np.ndarray, theory: float | None = None, spacing: float = 0.0) -> FitLabel | None:
    try:
        return FitLabel(name, analysis.fit_power_law(x, y, y_spacing=spacing), theory)
    except ValueError:  # fewer than two usable points: nothing to fit yet
        return None


def regime_fits(name: str, gammas: np.ndarray, etas: np.ndarray, depth: int, spacing: float = 0.0) -> list[FitLabel]:
    """Power-law fits of η(γ) on each side of the crossover that has at least two points: the lazy
    side (γ < 1, theory slope 2) and the rich side (γ > 1, theory 2/L). γ = 1 itself joins neither.
    spacing: the η grid's ln-spacing (engine.analysis.grid_spacing), carried into each slope's error."""
    out = []
    for side, keep, theory in (
        ("lazy, γ<1", gammas < CROSSOVER_GAMMA, 2.0),
        ("rich, γ>1", gammas > CROSSOVER_GAMMA, 2.0 / depth),
    ):
        fit = _fit(f"{name} ({side})", gammas[keep], etas[keep], theory, spacing)
        if fit is not None:
            out.append(fit)
    return out


SIDES = (("lazy side (γ < 1)", "below 1", lambda g: g < CROSSOVER_GAMMA),
         ("rich side (γ > 1)", "above 1", lambda g: g > CROSSOVER_GAMMA))


def missing_fit_notes(grid: HeatmapGrid, *, lower_is_better: bool = True) -> list[str]:
    """Why a power-law fit is not drawn, one line per side of the crossover: a fit needs points at two
    or more γ on its side. The quick demo's 3 γ (one per side) showed no fit and no word why."""
    notes = []
    rg, _ = ridge_points(grid, lower_is_better=lower_is_better).bracketed
    bg, _ = boundary(grid)
    for side, where, on in SIDES:
        in_grid = grid.gammas[on(grid.gammas)]
        if in_grid.size < 2:
            have = f"{in_grid.size} γ there" + (f" ({', '.join(f'{g:.3g}' for g in in_grid)})" if in_grid.size else "")
            notes.append(f"No fits on the {side}: a fit needs 2 or more γ there and this grid has {have}; "
                         f"add γ values {where}.")
            continue
        for what, found, fix in (
            ("η*", rg, "the others' best η sits at the edge of the η range or is still unknown: widen η"),
            ("η_max", bg, "the others have no diverged η above a stable one yet: extend η upward"),
        ):
            n = int(on(found).sum())
            if n < 2:
                notes.append(f"No {what} fit on the {side}: only {n} of its {in_grid.size} γ have one ({fix}).")
    return notes


def overlay_curves(
    grid: HeatmapGrid,
    depth: int,
    *,
    show: tuple[str, ...] = ("ridge", "boundary", "fits", "theory"),
    lower_is_better: bool = True,
) -> tuple[list[Curve], list[FitLabel]]:
    """Curves to draw and the fits to report. Theory lines are anchored at the ridge's end points:
    γ² through the smallest-γ ridge point (lazy side), γ^(2/L) through the largest (rich side)."""
    curves: list[Curve] = []
    fits: list[FitLabel] = []
    found = ridge_points(grid, lower_is_better=lower_is_better)
    rg, re = found.bracketed  # edge points are drawn, never fitted nor anchoring a theory line
    bg, be = boundary(grid)
    if "ridge" in show and found.gammas.size:
        # magenta reads on every Viridis colour and on the white legend (white/grey vanish there)
        curves.append(Curve("η* ridge", found.gammas, found.etas, colour="#e040fb", markers=True))
        if found.edge.any():
            curves.append(
                Curve(
                    "η* at the grid edge (not bracketed)",
                    found.gammas[found.edge],
                    found.etas[found.edge],
                    colour="#e040fb",
                    markers=True,
                    symbol="diamond-open",
                    lines=False,
                )
            )
    if "boundary" in show and bg.size:
        curves.append(Curve("η_max boundary", bg, be, colour="#ff6f61", markers=True, dash="dot"))
    if "fits" in show:
        for name, g, e, colour in (("fit η*", rg, re, "#ce93d8"), ("fit η_max", bg, be, "#ffb3a7")):
            for fit in regime_fits(name, g, e, depth, analysis.grid_spacing(grid.etas)):
                lazy = "lazy" in fit.name
                if name == "fit η*":
                    edge_g = found.gammas[found.edge]
                    fit = replace(
                        fit, left_out=int(np.sum(edge_g < CROSSOVER_GAMMA if lazy else edge_g > CROSSOVER_GAMMA))
                    )
                fits.append(fit)
                side = (g < CROSSOVER_GAMMA) if lazy else (g > CROSSOVER_GAMMA)
                xs = np.geomspace(g[side].min(), g[side].max(), 20)  # drawn over the points it fits
                curves.append(Curve(fit.label(), xs, fit.fit.predict(xs), dash="dash", colour=colour))
    if "theory" in show and rg.size and grid.gammas.size:
        xs = np.geomspace(grid.gammas.min(), grid.gammas.max(), 30)
        g0, e0 = rg[0], re[0]
        curves.append(Curve("theory η ∝ γ² (lazy)", xs, e0 * (xs / g0) ** 2, dash="longdash", colour="#80deea"))
        g1, e1 = rg[-1], re[-1]
        p = 2.0 / depth
        curves.append(
            Curve(f"theory η ∝ γ^(2/L), L={depth}", xs, e1 * (xs / g1) ** p, dash="longdashdot", colour="#ffe082")
        )
    return curves, fits


def selected_cell(event: object) -> tuple[float, float] | None:
    """(γ, η) of the first clicked cell in a st.plotly_chart selection event (or None).

    The clickable layer's points carry customdata [γ, η, status]; other traces' points are
    mapped back from their log10 coordinates."""
    selection = getattr(event, "selection", None)
    if selection is None and isinstance(event, dict):
        selection = event.get("selection")
    if not selection:
        return None
    points = selection.get("points", []) if isinstance(selection, dict) else getattr(selection, "points", [])
    for p in points:
        cd = p.get("customdata")
        if isinstance(cd, list | tuple) and len(cd) >= 2:
            try:
                return float(cd[0]), float(cd[1])
            except (TypeError, ValueError):
                continue
        if "x" in p and "y" in p:
            try:
                return 10.0 ** float(p["x"]), 10.0 ** float(p["y"])
            except (TypeError, ValueError):
                continue
    return None


def snap_to_cell(grid: HeatmapGrid, gamma: float, eta: float) -> tuple[float, float] | None:
    """The grid cell (γ, η) whose area holds the point (γ, η), or None outside the grid. A click
    selects the point under the pointer, which may be a curve's marker (an η* ridge point sits
    inside its cell, its η between grid values): that click selects the cell it lies in."""
    if grid.gammas.size == 0 or not (gamma > 0 and eta > 0):
        return None
    lg, le = math.log10(gamma), math.log10(eta)
    gx, ey = grid.gamma_edges, grid.eta_edges  # (G+1,), (E+1,) log10 units
    if not (gx[0] <= lg <= gx[-1] and ey[0] <= le <= ey[-1]):
        return None
    # edges are the log-midpoints of the centres: the cell holding a point is the nearest in log10
    gi = int(np.argmin(np.abs(np.log10(grid.gammas) - lg)))
    ei = int(np.argmin(np.abs(np.log10(grid.etas) - le)))
    return float(grid.gammas[gi]), float(grid.etas[ei])


def cell_key(gamma: float, eta: float) -> str:
    """A grid cell as URL/session text: "γ,η" with every digit (floats read back exactly)."""
    return f"{float(gamma)!r},{float(eta)!r}"


def parse_cell(key: str) -> tuple[float, float]:
    """Inverse of cell_key."""
    gamma, eta = key.split(",")
    return float(gamma), float(eta)
