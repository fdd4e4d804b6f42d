"""What the phase portrait draws over the heatmap: the η*(γ) ridge, the η_max boundary, power-law
fits with slope ± standard error, and the theory lines γ² (lazy side) and γ^(2/L) (rich side)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from app.logic.figures import Curve
from app.logic.grid import HeatmapGrid

STATS = {"final": "final value", "best": "best value", "at_step": "value at step t",
         "steps_to": "steps to reach a threshold"}
AGGS = ("mean", "median", "min")


@dataclass(frozen=True)
class PowerLawFit:
    """η = prefactor · γ^slope fitted in log-log space; `stderr` is the slope's standard error."""

    name: str
    slope: float
    stderr: float
    prefactor: float
    n: int

    def label(self) -> str:
        err = "n/a" if not math.isfinite(self.stderr) else f"{self.stderr:.2f}"
        return f"{self.name}: slope {self.slope:.2f} ± {err} (n={self.n})"


def fit_power_law(x: np.ndarray, y: np.ndarray, name: str) -> PowerLawFit | None:
    """Least squares of log y on log x. Needs two points; stderr needs three (NaN otherwise)."""
    keep = (x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)
    lx, ly = np.log(x[keep]), np.log(y[keep])
    n = lx.size
    if n < 2 or np.ptp(lx) == 0:
        return None
    slope, intercept = np.polyfit(lx, ly, 1)
    stderr = math.nan
    if n > 2:
        resid = ly - (slope * lx + intercept)
        stderr = math.sqrt(float(resid @ resid) / (n - 2) / float(((lx - lx.mean()) ** 2).sum()))
    return PowerLawFit(name, float(slope), stderr, float(math.exp(intercept)), int(n))


def eta_star(grid: HeatmapGrid, *, lower_is_better: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per γ with at least one ok cell: the η of the best ok value (η*, the ridge). (k,), (k,)."""
    ok = grid.ok_values()  # (E, G)
    gs, es = [], []
    for j, gamma in enumerate(grid.gammas):
        col = ok[:, j]
        if np.all(np.isnan(col)):
            continue
        i = int(np.nanargmin(col) if lower_is_better else np.nanargmax(col))
        gs.append(gamma)
        es.append(grid.etas[i])
    return np.asarray(gs), np.asarray(es)


def eta_max(grid: HeatmapGrid) -> tuple[np.ndarray, np.ndarray]:
    """Per γ: the largest η whose cell finished without diverging, when some larger η diverged
    (otherwise the boundary lies above the grid and is not drawn). (k,), (k,)."""
    gs, es = [], []
    for j, gamma in enumerate(grid.gammas):
        col = grid.status[:, j]
        ok_idx = np.flatnonzero(col == "ok")
        div_idx = np.flatnonzero(col == "diverged")
        if ok_idx.size == 0 or div_idx.size == 0:
            continue
        top_ok = int(ok_idx.max())
        if div_idx.max() > top_ok:
            gs.append(gamma)
            es.append(grid.etas[top_ok])
    return np.asarray(gs), np.asarray(es)


def overlay_curves(grid: HeatmapGrid, depth: int, *, show: tuple[str, ...] = ("ridge", "boundary", "fits",
                                                                              "theory"),
                   lower_is_better: bool = True) -> tuple[list[Curve], list[PowerLawFit]]:
    """Curves to draw and the fits to report. Theory lines are anchored at the ridge's end points:
    γ² through the smallest-γ ridge point (lazy side), γ^(2/L) through the largest (rich side)."""
    curves: list[Curve] = []
    fits: list[PowerLawFit] = []
    rg, re = eta_star(grid, lower_is_better=lower_is_better)
    bg, be = eta_max(grid)
    if "ridge" in show and rg.size:
        curves.append(Curve("η* ridge", rg, re, colour="white", markers=True))
    if "boundary" in show and bg.size:
        curves.append(Curve("η_max boundary", bg, be, colour="#ff6f61", markers=True, dash="dot"))
    if "fits" in show:
        for name, g, e, colour in (("fit η*", rg, re, "#e0e0e0"), ("fit η_max", bg, be, "#ffb3a7")):
            fit = fit_power_law(g, e, name)
            if fit is not None:
                fits.append(fit)
                xs = np.geomspace(g.min(), g.max(), 20)
                curves.append(Curve(f"{fit.label()}", xs, fit.prefactor * xs**fit.slope, dash="dash",
                                    colour=colour))
    if "theory" in show and rg.size and grid.gammas.size:
        xs = np.geomspace(grid.gammas.min(), grid.gammas.max(), 30)
        g0, e0 = rg[0], re[0]
        curves.append(Curve("theory η ∝ γ² (lazy)", xs, e0 * (xs / g0) ** 2, dash="longdash", colour="#80deea"))
        g1, e1 = rg[-1], re[-1]
        p = 2.0 / depth
        curves.append(Curve(f"theory η ∝ γ^(2/L), L={depth}", xs, e1 * (xs / g1) ** p, dash="longdashdot",
                            colour="#ffe082"))
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
