"""The γ–η grid behind a phase portrait: cell edges on log axes and the heatmap matrix.

A sweep's γ and η values are often uneven (a log range plus a few hand-added points), so each cell
is drawn between the *geometric* midpoints of its neighbours instead of at equal widths: the picture
then shows every cell where it really is on the log axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# not_reached: steps to a threshold, finished without reaching it (not a divergence); cancelled: every
# seed without a value was cancelled (storage.queries.heatmap's cell_status)
CELL_STATUSES = ("ok", "not_reached", "diverged", "running", "cancelled", "missing")
HEATMAP_COLUMNS = (
    "gamma", "eta", "value", "n_seeds", "n_done", "n_diverged", "n_running", "n_missing", "cell_status",
)


def log_cell_edges(values: np.ndarray | list[float]) -> np.ndarray:
    """Cell edges around sorted distinct positive centres, in log10 units.

    Inner edges are the geometric midpoints of neighbours (arithmetic in log10); the outer edges
    mirror the first and last inner gaps. A single centre gets half a decade on each side.
    Returns shape (n + 1,).
    """
    centres = np.log10(np.asarray(values, dtype=np.float64))
    if centres.ndim != 1 or centres.size == 0:
        raise ValueError("values: need at least one positive number")
    if not np.all(np.isfinite(centres)):
        raise ValueError("values: every value must be a finite number > 0")
    if np.any(np.diff(centres) <= 0):
        raise ValueError("values: must be sorted ascending without repeats")
    if centres.size == 1:
        return np.array([centres[0] - 0.5, centres[0] + 0.5])
    mid = (centres[1:] + centres[:-1]) / 2  # (n-1,)
    first = centres[0] - (mid[0] - centres[0])
    last = centres[-1] + (centres[-1] - mid[-1])
    return np.concatenate([[first], mid, [last]])


@dataclass(frozen=True)
class HeatmapGrid:
    """A heatmap frame laid out as matrices indexed [η index, γ index] (rows = η, the y axis)."""

    gammas: np.ndarray  # (G,) ascending
    etas: np.ndarray  # (E,) ascending
    value: np.ndarray  # (E, G) float, NaN where there is no value to show
    status: np.ndarray  # (E, G) object: one of CELL_STATUSES
    n_seeds: np.ndarray  # (E, G) int
    n_done: np.ndarray  # (E, G) int
    n_diverged: np.ndarray  # (E, G) int
    live: np.ndarray  # (E, G) float: provisional value of the seeds still training, NaN where none
    live_step: np.ndarray  # (E, G) float: the least step those seeds have logged, NaN where none
    # (E, G) int: seeds shown at an earlier finished attempt while a newer one is queued or running
    # (storage.queries.heatmap's n_newer); None for grids without it (a difference of two sweeps)
    n_newer: np.ndarray | None = None
    # (E, G) int: seeds queued or running without a value yet (storage.queries.heatmap's n_running):
    # a cell can be ok (one seed done) while others train, after Add seeds say; None where unknown
    n_running: np.ndarray | None = None

    @property
    def gamma_edges(self) -> np.ndarray:
        return log_cell_edges(self.gammas)

    @property
    def eta_edges(self) -> np.ndarray:
        return log_cell_edges(self.etas)

    def ok_values(self) -> np.ndarray:
        """(E, G) values of cells whose status is ok; NaN elsewhere (never a good value by accident)."""
        return np.where(self.status == "ok", self.value, np.nan)

    def count(self, status: str) -> int:
        return int(np.sum(self.status == status))


def heatmap_grid(frame: pd.DataFrame) -> HeatmapGrid:
    """Lay a `storage.queries.heatmap` frame out on the (η, γ) grid. Absent cells become missing."""
    missing_cols = [c for c in HEATMAP_COLUMNS if c not in frame.columns]
    if missing_cols:
        raise ValueError(f"heatmap frame: missing columns {', '.join(missing_cols)}")
    if frame.empty:
        empty = np.zeros((0, 0))
        return HeatmapGrid(np.zeros(0), np.zeros(0), empty, empty.astype(object), empty.astype(int),
                           empty.astype(int), empty.astype(int), empty, empty)
    gammas = np.unique(frame["gamma"].to_numpy(dtype=np.float64))
    etas = np.unique(frame["eta"].to_numpy(dtype=np.float64))
    gi = np.searchsorted(gammas, frame["gamma"].to_numpy(dtype=np.float64))
    ei = np.searchsorted(etas, frame["eta"].to_numpy(dtype=np.float64))
    shape = (etas.size, gammas.size)
    value = np.full(shape, np.nan)
    status = np.full(shape, "missing", dtype=object)
    n_seeds = np.zeros(shape, dtype=int)
    n_done = np.zeros(shape, dtype=int)
    n_div = np.zeros(shape, dtype=int)
    value[ei, gi] = frame["value"].to_numpy(dtype=np.float64)
    status[ei, gi] = frame["cell_status"].astype(str).to_numpy()
    n_seeds[ei, gi] = frame["n_seeds"].fillna(0).to_numpy(dtype=int)
    n_done[ei, gi] = frame["n_done"].fillna(0).to_numpy(dtype=int)
    n_div[ei, gi] = frame["n_diverged"].fillna(0).to_numpy(dtype=int)
    live = np.full(shape, np.nan)
    live_step = np.full(shape, np.nan)
    if "live_value" in frame.columns:  # optional: frames written before storage reported it lack it
        live[ei, gi] = frame["live_value"].to_numpy(dtype=np.float64)
        live_step[ei, gi] = frame["live_step"].to_numpy(dtype=np.float64)
    n_newer = np.zeros(shape, dtype=int)
    if "n_newer" in frame.columns:  # optional, as live_value
        n_newer[ei, gi] = frame["n_newer"].fillna(0).to_numpy(dtype=int)
    n_running = np.zeros(shape, dtype=int)
    n_running[ei, gi] = frame["n_running"].fillna(0).to_numpy(dtype=int)
    live[status != "running"] = np.nan  # provisional only while nothing final stands in the cell
    # An "ok" cell whose value is not finite cannot be drawn as good: show it as diverged. (Steps to a
    # threshold never reached arrive as not_reached, +inf: a state of their own, not a divergence.)
    bad = (status == "ok") & ~np.isfinite(value)
    status[bad] = "diverged"
    return HeatmapGrid(gammas, etas, value, status, n_seeds, n_done, n_div, live, live_step, n_newer, n_running)


def nearest_index(values: np.ndarray, target: float) -> int:
    """Index of the value nearest to `target` on a log scale (for matching grids of two sweeps)."""
    if values.size == 0:
        raise ValueError("values: empty grid")
    return int(np.argmin(np.abs(np.log10(values) - np.log10(target))))


def shared_log_range(*grids: HeatmapGrid) -> tuple[float, float] | None:
    """One log10 colour range covering the ok values of every grid (so two portraits compare)."""
    values = [np.log10(g.ok_values()[g.ok_values() > 0]) for g in grids if g.value.size]
    values = [v for v in values if v.size]
    if not values:
        return None
    allv = np.concatenate(values)
    return float(allv.min()), float(allv.max())


def difference_grid(a: HeatmapGrid, b: HeatmapGrid) -> HeatmapGrid:
    """log10(a) − log10(b) on the cells both sweeps share (γ, η matched to 1e-9 relative). A cell is
    ok only when it is ok in both; diverged when either diverged; else missing."""
    gammas = np.array([g for g in a.gammas if np.any(np.isclose(b.gammas, g, rtol=1e-9, atol=0))])
    etas = np.array([e for e in a.etas if np.any(np.isclose(b.etas, e, rtol=1e-9, atol=0))])
    shape = (etas.size, gammas.size)
    value = np.full(shape, np.nan)
    status = np.full(shape, "missing", dtype=object)
    zeros = np.zeros(shape, dtype=int)
    for j, g in enumerate(gammas):
        ja, jb = nearest_index(a.gammas, g), nearest_index(b.gammas, g)
        for i, e in enumerate(etas):
            ia, ib = nearest_index(a.etas, e), nearest_index(b.etas, e)
            sa, sb = a.status[ia, ja], b.status[ib, jb]
            if sa == "ok" and sb == "ok" and a.value[ia, ja] > 0 and b.value[ib, jb] > 0:
                value[i, j] = np.log10(a.value[ia, ja]) - np.log10(b.value[ib, jb])
                status[i, j] = "ok"
            elif "diverged" in (sa, sb):
                status[i, j] = "diverged"
            elif "running" in (sa, sb):
                status[i, j] = "running"
    nothing = np.full(shape, np.nan)  # a difference has no provisional values
    return HeatmapGrid(gammas, etas, value, status, zeros, zeros, zeros, nothing, nothing)
