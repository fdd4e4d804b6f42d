"""Plotly figure builders for every page. Pure functions of DataFrames/arrays; no Streamlit.

Every figure carries a constant `uirevision` so that when live data arrives and the page reruns,
the browser keeps the user's zoom and pan. Phase portraits are drawn in log10 coordinates on
linear axes with decade tick labels: the cell edges are then exact numbers we control (plotly's
own log-axis heatmap bricks are computed from centres, which misplaces uneven grids).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.logic.grid import HeatmapGrid

UIREVISION = "gamma-lab"  # constant: zoom survives reruns
DIVERGED_COLOUR = "#7b1e1e"  # dark red: never on the value colour scale (Viridis)
RUNNING_COLOUR = "#f2a900"
MISSING_COLOUR = "#9e9e9e"
NOT_REACHED_COLOUR = "#4fc3f7"  # light blue: finished, never reached the threshold (not diverged)
CANCELLED_COLOUR = "#616161"
VALUE_SCALE = "Viridis"
# A difference of two portraits: a diverging scale centred at 0. Its ends are dark red and dark blue,
# so diverged cells there are drawn black (off the scale) instead of the portrait's dark red.
DIFFERENCE_SCALE = "RdBu_r"
DIVERGED_ON_DIFFERENCE = "#000000"
# Cell states drawn as a marker at the cell centre (status, legend name, symbol, colour)
MARKED_STATES = (
    ("running", "running", "circle-open", RUNNING_COLOUR),
    ("not_reached", "not reached (finished above the threshold)", "triangle-up-open", NOT_REACHED_COLOUR),
    ("cancelled", "cancelled", "square-x-open", CANCELLED_COLOUR),
    ("missing", "missing", "x-thin-open", MISSING_COLOUR),
)
# Scattergl only above this many points: WebGL contexts are scarce in a browser tab.
WEBGL_THRESHOLD = 4000
MAX_COLOUR_GROUPS = 24  # legend entries (and traces) of a trajectories/overlay figure
# Plotly labels log axes with SI suffixes by default: a diverging loss read "10B", "100T", a
# sharpness "100μ". Researchers read powers of ten: 10⁻⁴ … 10¹⁶.
LOG_AXIS = {"type": "log", "exponentformat": "power"}
LINEAR_AXIS = {"type": "linear"}


def axis(log: bool) -> dict[str, str]:
    """Plotly axis settings for a log or linear axis."""
    return dict(LOG_AXIS if log else LINEAR_AXIS)


@dataclass(frozen=True)
class Curve:
    """A line drawn over the γ–η plane (real units): ridge, boundary, power-law fit, theory line."""

    name: str
    gammas: np.ndarray  # (n,)
    etas: np.ndarray  # (n,)
    dash: str = "solid"
    colour: str = "white"
    markers: bool = False
    symbol: str = "circle"  # marker symbol (with markers)
    lines: bool = True  # False: markers only (points flagged apart from their curve)


def _decade_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    """Tick positions (log10 units) and labels for a log axis drawn on linear coordinates."""
    lo_i, hi_i = math.floor(lo), math.ceil(hi)
    vals: list[float] = []
    text: list[str] = []
    fine = hi - lo <= 2.5  # few decades: label 1, 2, 5 within each
    for k in range(lo_i, hi_i + 1):
        for m in (1, 2, 5) if fine else (1,):
            v = k + math.log10(m)
            if lo - 1e-9 <= v <= hi + 1e-9:
                vals.append(v)
                text.append(f"{m * 10.0**k:g}")
    return vals, text


def portrait_figure(
    grid: HeatmapGrid,
    *,
    value_label: str,
    log_value: bool = True,
    curves: Sequence[Curve] = (),
    colour_range: tuple[float, float] | None = None,
    title: str | None = None,
    show_scale: bool = True,
    selected: tuple[float, float] | None = None,
    centre_zero: bool = False,
) -> go.Figure:
    """The γ–η heatmap. Only `ok` cells carry values on the colour scale; diverged cells are a
    separate single-colour layer; running and missing cells get markers on top. A transparent
    marker at each cell centre makes cells clickable (plotly selection events need points).
    `selected` (γ, η): that cell of the grid is outlined (nothing when it is not a cell of it).
    `centre_zero` (a difference): a diverging scale with white at 0 over a range symmetric about 0,
    diverged cells drawn in a colour off that scale.

    Drawn in layers, bottom to top (each step below adds one): values, diverged cells, state markers,
    click targets, curves, the selected cell's outline; then the axes."""
    fig = go.Figure()
    if grid.gammas.size == 0:
        fig.update_layout(title=title or "no cells yet", uirevision=UIREVISION)
        return fig
    z, z_live = _portrait_values(grid, log_value)
    zmin, zmax = _colour_limits(z, z_live, colour_range, centre_zero)
    _add_value_layers(fig, grid, z, z_live, (zmin, zmax), value_label, log_value, show_scale, centre_zero)
    _add_diverged_layer(fig, grid, DIVERGED_ON_DIFFERENCE if centre_zero else DIVERGED_COLOUR)
    cx, cy = np.meshgrid(np.log10(grid.gammas), np.log10(grid.etas))  # (E, G) cell centres
    _add_state_markers(fig, grid, cx, cy)
    _add_click_targets(fig, grid, cx, cy, value_label)
    for curve in curves:
        _add_curve(fig, curve)
    outline = _cell_outline(grid, selected)
    if outline is not None:
        # black under white: reads on every Viridis colour, the dark red of diverged cells included
        for colour, width in (("black", 5), ("white", 2.5)):
            fig.add_shape(
                type="rect", **outline, line={"color": colour, "width": width}, layer="above", name="selected cell"
            )
    _portrait_layout(fig, grid, title)
    return fig


def _portrait_values(grid: HeatmapGrid, log_value: bool) -> tuple[np.ndarray, np.ndarray]:
    """(finished values of `ok` cells, provisional values of running cells), both (E, G), NaN
    elsewhere, in log10 when `log_value` (non-positive values then NaN)."""
    ok = grid.ok_values()  # (E, G)
    live = np.where(np.isfinite(grid.live), grid.live, np.nan)  # (E, G) provisional, running cells only
    if not log_value:
        return ok, live
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok > 0, np.log10(ok), np.nan), np.where(live > 0, np.log10(live), np.nan)


def _colour_limits(
    z: np.ndarray, z_live: np.ndarray, colour_range: tuple[float, float] | None, centre_zero: bool
) -> tuple[float | None, float | None]:
    """(zmin, zmax) of the colour scale: symmetric about 0 for a difference, else the caller's range,
    else the span of the finished and provisional values together (None, None when there are none)."""
    if centre_zero:
        spread = np.abs(np.concatenate([z[np.isfinite(z)], np.asarray(colour_range or (), dtype=np.float64)]))
        half = float(spread.max()) if spread.size and spread.max() > 0 else 1.0
        return -half, half
    if colour_range:
        return colour_range
    # one scale for final and provisional values, so a colour means the same in both layers
    both = np.concatenate([z[np.isfinite(z)], z_live[np.isfinite(z_live)]])
    return (float(both.min()), float(both.max())) if both.size else (None, None)


def _add_value_layers(
    fig: go.Figure,
    grid: HeatmapGrid,
    z: np.ndarray,
    z_live: np.ndarray,
    limits: tuple[float | None, float | None],
    value_label: str,
    log_value: bool,
    show_scale: bool,
    centre_zero: bool,
) -> None:
    """The heatmap of finished values and, when some cells are running, their latest values faded."""
    gx, ey = grid.gamma_edges, grid.eta_edges  # (G+1,), (E+1,) log10 units
    zmin, zmax = limits
    label = f"log10 {value_label}" if log_value else value_label
    fig.add_trace(
        go.Heatmap(
            x=gx,
            y=ey,
            z=z,
            zmin=zmin,
            zmax=zmax,
            colorscale=DIFFERENCE_SCALE if centre_zero else VALUE_SCALE,
            name=value_label,
            colorbar={"title": {"text": label}} if show_scale else None,
            showscale=show_scale,
            hoverinfo="skip",  # the click targets carry the hover: a hovered heatmap is not clickable
        )
    )
    if np.isfinite(z_live).any():
        # Seeds still training: their latest value, faded, so the portrait fills in while a sweep
        # runs (the running marker stays on top: these numbers are not final).
        fig.add_trace(
            go.Heatmap(
                x=gx,
                y=ey,
                z=z_live,
                zmin=zmin,
                zmax=zmax,
                colorscale=VALUE_SCALE,
                showscale=False,
                opacity=0.45,
                name="running (latest value)",
                hoverinfo="skip",
            )
        )


def _add_diverged_layer(fig: go.Figure, grid: HeatmapGrid, div_colour: str) -> None:
    """Diverged cells in one colour off the value scale, with a legend entry (when there are any)."""
    if not np.any(grid.status == "diverged"):
        return
    fig.add_trace(
        go.Heatmap(
            x=grid.gamma_edges,
            y=grid.eta_edges,
            z=np.where(grid.status == "diverged", 1.0, np.nan),
            zmin=0,
            zmax=1,
            showscale=False,
            name="diverged",
            colorscale=[[0, div_colour], [1, div_colour]],
            hoverinfo="skip",
        )
    )
    # Heatmaps have no legend entry: without this one the dark red cells were unexplained.
    fig.add_trace(
        go.Scatter(
            x=[None],
            y=[None],
            mode="markers",
            name="diverged",
            legendgroup="diverged",
            hoverinfo="skip",
            marker={"symbol": "square", "size": 12, "color": div_colour},
        )
    )


def _add_state_markers(fig: go.Figure, grid: HeatmapGrid, cx: np.ndarray, cy: np.ndarray) -> None:
    """A marker at the centre (cx, cy) of each running, not-reached, cancelled or missing cell, and of
    each cell a newer attempt is training."""
    for status, name, symbol, colour in MARKED_STATES:
        mask = grid.status == status
        if np.any(mask):
            fig.add_trace(
                go.Scatter(
                    x=cx[mask],
                    y=cy[mask],
                    mode="markers",
                    name=name,
                    hoverinfo="skip",
                    marker={"symbol": symbol, "size": 11, "color": colour, "line": {"width": 2, "color": colour}},
                )
            )
    if grid.n_newer is not None and np.any(grid.n_newer > 0):
        # A rerun is training these cells: they keep the finished attempt's values until it finishes.
        mask = grid.n_newer > 0
        fig.add_trace(
            go.Scatter(
                x=cx[mask],
                y=cy[mask],
                mode="markers",
                name="newer attempt running",
                hoverinfo="skip",
                marker={"symbol": "circle-open-dot", "size": 11, "color": RUNNING_COLOUR, "line": {"width": 2}},
            )
        )


def _add_click_targets(fig: go.Figure, grid: HeatmapGrid, cx: np.ndarray, cy: np.ndarray, value_label: str) -> None:
    """One transparent marker per cell, carrying the cell's γ, η, value, seeds done, status and notes
    for the hover. Plotly selects the hovered point on click, and with hoverdistance=-1 (the layout)
    the hovered point is the nearest centre, i.e. the cell under the pointer: a click anywhere in a
    cell selects it (users clicked off the 18 px centre marker and nothing happened)."""
    shape = grid.status.shape  # (E, G)
    customdata = np.dstack(
        [
            np.broadcast_to(grid.gammas[None, :], shape),
            np.broadcast_to(grid.etas[:, None], shape),
            grid.value,
            grid.n_done,
            grid.n_seeds,
        ]
    )  # (E, G, 5)
    # Hover numbers use d3's trimmed format (~): plain ".3g" keeps trailing zeros ("γ=1.00").
    fig.add_trace(
        go.Scatter(
            x=cx.ravel(),
            y=cy.ravel(),
            mode="markers",
            name="cells",
            showlegend=False,
            customdata=np.column_stack(
                [
                    customdata.reshape(-1, 5).astype(object),
                    grid.status.ravel(),
                    _cell_notes(grid, value_label).ravel(),
                ]
            ),  # (E·G, 7)
            marker={"size": 18, "color": "rgba(0,0,0,0)", "symbol": "square"},
            hovertemplate="γ=%{customdata[0]:~.3g}<br>η=%{customdata[1]:~.3g}<br>"
            + value_label
            + "=%{customdata[2]:~.4g}<br>%{customdata[5]}, done %{customdata[3]}/%{customdata[4]} seeds"
            + "%{customdata[6]}<extra></extra>",
        )
    )


def _add_curve(fig: go.Figure, curve: Curve) -> None:
    """A ridge, edge, fit or theory line in log10 coordinates (points outside the log axes dropped)."""
    keep = (curve.gammas > 0) & (curve.etas > 0) & np.isfinite(curve.gammas) & np.isfinite(curve.etas)
    fig.add_trace(
        go.Scatter(
            x=np.log10(curve.gammas[keep]),
            y=np.log10(curve.etas[keep]),
            name=curve.name,
            mode=("lines+markers" if curve.markers else "lines") if curve.lines else "markers",
            line={"dash": curve.dash, "color": curve.colour, "width": 2},
            marker={"size": 13, "symbol": curve.symbol, "line": {"width": 2, "color": curve.colour}}
            if curve.symbol != "circle"
            else {"size": 7},
            hovertemplate=curve.name + ": γ=%{customdata[0]:~.3g}, η=%{customdata[1]:~.3g}<extra></extra>",
            customdata=np.column_stack([curve.gammas[keep], curve.etas[keep]]),
        )
    )


def _portrait_layout(fig: go.Figure, grid: HeatmapGrid, title: str | None) -> None:
    """Axes in log10 units with decade ticks over the grid's edges, click and hover behaviour, legend."""
    gx, ey = grid.gamma_edges, grid.eta_edges
    xt, xl = _decade_ticks(gx[0], gx[-1])
    yt, yl = _decade_ticks(ey[0], ey[-1])
    fig.update_layout(
        title=title,
        uirevision=UIREVISION,
        clickmode="event+select",
        dragmode="zoom",
        hovermode="closest",
        hoverdistance=-1,
        xaxis={
            "title": "γ (feature-learning strength)",
            "tickvals": xt,
            "ticktext": xl,
            "range": [gx[0], gx[-1]],
            "showgrid": False,
        },
        yaxis={
            "title": "η (raw learning rate; SGD step = N·η)",
            "tickvals": yt,
            "ticktext": yl,
            "range": [ey[0], ey[-1]],
            "showgrid": False,
        },
        legend={"orientation": "h", "y": -0.18},
        margin={"t": 40 if title else 10},
    )


def _cell_outline(grid: HeatmapGrid, cell: tuple[float, float] | None) -> dict[str, float] | None:
    """x0, x1, y0, y1 (log10 units: the cell's edges) of the grid cell (γ, η), or None."""
    if cell is None:
        return None
    gamma, eta = cell
    gi = np.flatnonzero(np.isclose(grid.gammas, gamma, rtol=1e-9, atol=0.0))
    ei = np.flatnonzero(np.isclose(grid.etas, eta, rtol=1e-9, atol=0.0))
    if gi.size != 1 or ei.size != 1:
        return None
    g, e = int(gi[0]), int(ei[0])
    gx, ey = grid.gamma_edges, grid.eta_edges
    return {"x0": float(gx[g]), "x1": float(gx[g + 1]), "y0": float(ey[e]), "y1": float(ey[e + 1])}


def _cell_notes(grid: HeatmapGrid, value_label: str) -> np.ndarray:
    """(E, G) hover suffix: for a running cell with a provisional value, that value and its step; for a
    cell whose seeds are being trained again, that the finished attempt is shown until the new one ends."""
    notes = np.full(grid.status.shape, "", dtype=object)
    for e, g in zip(*np.nonzero(np.isfinite(grid.live)), strict=True):
        step = int(grid.live_step[e, g])
        notes[e, g] = f"<br>latest {value_label}={grid.live[e, g]:.4g} at step {step} (provisional)"
    if grid.n_newer is not None:
        for e, g in zip(*np.nonzero(grid.n_newer > 0), strict=True):
            notes[e, g] += (
                f"<br>newer attempt running for {int(grid.n_newer[e, g])} seed(s): "
                "showing the finished one until it ends"
            )
    return notes


def _line_trace(x: np.ndarray, y: np.ndarray, **kwargs: object) -> go.Scatter | go.Scattergl:
    cls = go.Scattergl if x.size > WEBGL_THRESHOLD else go.Scatter
    return cls(x=x, y=y, **kwargs)


def _concat_with_gaps(frame: pd.DataFrame, x: str, y: str, by: str = "run_id") -> tuple[np.ndarray, np.ndarray]:
    """Several runs in one trace, separated by NaN gaps: one trace per colour group, not per run.
    Runs keep their order of first appearance and their rows' order; vectorized (no Python loop
    per run: a 10,000-run sweep's row of 100 runs costs one argsort)."""
    if frame.empty:
        return np.zeros(0), np.zeros(0)
    codes, _ = pd.factorize(frame[by], sort=False)  # (P,) run index in order of first appearance
    order = np.argsort(codes, kind="stable")  # (P,) rows grouped by run, order within a run kept
    codes = codes[order]
    xs = frame[x].to_numpy(dtype=np.float64)[order]
    ys = frame[y].to_numpy(dtype=np.float64)[order]
    ends = np.flatnonzero(np.diff(codes)) + 1  # (R-1,) first row of each run after the first
    gap_at = np.append(ends, codes.size)  # a NaN after every run, the last one included
    return np.insert(xs, gap_at, np.nan), np.insert(ys, gap_at, np.nan)


def colour_for(values: Sequence[float]) -> dict[float, str]:
    """Map each distinct γ (or η) to a Viridis colour on a log scale."""
    from plotly.colors import sample_colorscale

    distinct = sorted(set(float(v) for v in values))
    if len(distinct) == 1:
        return {distinct[0]: sample_colorscale(VALUE_SCALE, [0.5])[0]}
    logs = np.log10(distinct)
    pos = (logs - logs[0]) / (logs[-1] - logs[0])
    return dict(zip(distinct, sample_colorscale(VALUE_SCALE, list(pos)), strict=True))


def colour_groups(values: np.ndarray, most: int = MAX_COLOUR_GROUPS) -> tuple[np.ndarray, dict[float, str]]:
    """Colour group of each row: its own value when there are at most `most` distinct values, else
    one of `most` equal bins on log10 (a 100-γ ridge becomes 24 legend entries and 24 traces instead
    of 100: plotly builds and serialises each trace at ~1 ms, and 100 legend entries are unreadable).
    Returns (P,) group keys (a value, or a bin's geometric centre) and key -> legend name, where the
    letter 'v' stands for the variable's symbol."""
    distinct = np.unique(values[np.isfinite(values) & (values > 0)])
    if distinct.size <= most:
        return values, {float(v): f"v={v:.3g}" for v in distinct}
    logs = np.log10(distinct)
    edges = np.linspace(logs[0], logs[-1], most + 1)  # (most+1,)
    which = np.clip(np.searchsorted(edges, np.log10(values), side="right") - 1, 0, most - 1)  # (P,)
    centres = 10.0 ** ((edges[:-1] + edges[1:]) / 2)  # (most,)
    names: dict[float, str] = {}
    for b in np.unique(which):
        inside = distinct[(logs >= edges[b]) & ((logs < edges[b + 1]) | (b == most - 1))]
        lo, hi = inside.min(), inside.max()
        names[float(centres[b])] = f"v={lo:.3g}" if lo == hi else f"v={lo:.3g}–{hi:.3g}"
    return centres[which], names


def trajectories_figure(
    series: pd.DataFrame,
    runs: pd.DataFrame,
    *,
    colour_by: str = "gamma",
    log_x: bool = True,
    log_y: bool = True,
    y_label: str = "train_loss",
    x_label: str = "step t",
    bands: pd.DataFrame | None = None,
) -> go.Figure:
    """Loss curves, one trace per colour value (γ or η). `series`: run_id, x, value, kind
    (kind 'diverged' marks the step where a run diverged). `runs`: run_id, gamma, eta, seed.
    `bands` (optional): x, lo, hi, label — a shaded seed band per label."""
    if colour_by not in ("gamma", "eta"):
        raise ValueError(f"colour_by: must be gamma or eta (got {colour_by!r})")
    fig = go.Figure()
    meta = runs.set_index("run_id")
    # γ, η come from the runs frame (an overlay frame carries its own copy: drop it, avoid a clash)
    data = series.drop(columns=["gamma", "eta"], errors="ignore").join(meta[["gamma", "eta"]], on="run_id", how="inner")
    # An empty join keeps the index named run_id beside the column: sorting by it then raised
    # "'run_id' is both an index level and a column label" (no run picked yet).
    data = data.reset_index(drop=True)
    if log_x:
        data = data[data["x"] > 0]
    if log_y:
        data = data[(data["value"] > 0) | (data["kind"] == "diverged")]
    if bands is not None and not bands.empty:
        for label, band in bands.groupby("label", sort=False):
            x = band["x"].to_numpy(dtype=np.float64)
            fig.add_trace(
                go.Scatter(
                    x=np.concatenate([x, x[::-1]]),
                    y=np.concatenate(
                        [band["hi"].to_numpy(dtype=np.float64), band["lo"].to_numpy(dtype=np.float64)[::-1]]
                    ),
                    fill="toself",
                    line={"width": 0},
                    fillcolor="rgba(120,120,120,0.25)",
                    hoverinfo="skip",
                    name=f"seed band {label}",
                    showlegend=True,
                )
            )
    symbol = "γ" if colour_by == "gamma" else "η"
    lines = data[data["kind"] != "diverged"].sort_values(["run_id", "x"])
    groups, names = colour_groups(lines[colour_by].to_numpy(dtype=np.float64))
    colours = colour_for(list(names)) if names else {}
    for centre, part in lines.groupby(groups, sort=True):
        x, y = _concat_with_gaps(part, "x", "value")
        name = names[float(centre)].replace("v", symbol)
        fig.add_trace(
            _line_trace(
                x,
                y,
                mode="lines",
                name=name,
                line={"color": colours[float(centre)], "width": 1.5},
                hovertemplate=f"{name}<br>x=%{{x:~.4g}}<br>y=%{{y:~.4g}}<extra></extra>",
            )
        )
    y_axis: dict[str, object] = {"title": y_label, **axis(log_y)}
    marks = _divergence_marks(data, lines, meta)
    if not marks.empty:
        y_range = _fitted_range(lines[~lines["run_id"].isin(marks["run_id"])]["value"], log_y)
        if y_range is None:  # every curve diverged: pin the markers to the top of the visible data
            finite = lines["value"][np.isfinite(lines["value"])]
            top = float(finite.max()) if not finite.empty else 1.0
        else:  # the range fits the curves that did not diverge; the diverged ones leave it at the top
            y_axis["range"] = list(y_range)
            top = 10.0 ** y_range[1] if log_y else y_range[1]
        fig.add_trace(
            go.Scatter(
                x=marks["x"],
                y=np.full(len(marks), top),
                mode="markers",
                name="diverged",
                cliponaxis=False,
                marker={"symbol": "x", "size": 10, "color": DIVERGED_COLOUR},
                hovertext=marks["text"],
                hovertemplate="%{hovertext}<extra></extra>",
            )
        )
    fig.update_layout(
        uirevision=UIREVISION,
        xaxis={"title": x_label, **axis(log_x)},
        yaxis=y_axis,
        margin={"t": 10},
        legend={"title": {"text": f"colour: {symbol}"}},
    )
    return fig


def _divergence_marks(data: pd.DataFrame, lines: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """One row per diverged run: run_id, x (its 'diverged' row's x, else its curve's last x) and a hover
    text naming the run. A run diverged when the series marks it or the runs frame's status says so."""
    flagged = data.loc[data["kind"] == "diverged", ["run_id", "x"]].drop_duplicates("run_id")
    if "status" in meta:
        by_status = [r for r in meta.index[meta["status"] == "diverged"] if r not in set(flagged["run_id"])]
        last = lines[lines["run_id"].isin(by_status)].groupby("run_id", sort=False)["x"].max().reset_index()
        flagged = pd.concat([flagged, last], ignore_index=True)
    if flagged.empty:
        return pd.DataFrame(columns=["run_id", "x", "text"])
    text = []
    for r, x in zip(flagged["run_id"], flagged["x"], strict=True):
        seed = f" seed={meta.at[r, 'seed']}" if "seed" in meta else ""
        text.append(f"diverged: run {r}<br>γ={meta.at[r, 'gamma']:.3g} η={meta.at[r, 'eta']:.3g}{seed}<br>at x={x:.4g}")
    return flagged.assign(text=text)


def _fitted_range(values: pd.Series, log: bool) -> tuple[float, float] | None:
    """A y-range (log10 units on a log axis) spanning the finite values with a 5 % margin; None if none."""
    v = values.to_numpy(dtype=np.float64)
    v = v[np.isfinite(v) & (v > 0)] if log else v[np.isfinite(v)]
    if v.size == 0:
        return None
    lo, hi = (np.log10(v.min()), np.log10(v.max())) if log else (v.min(), v.max())
    pad = 0.05 * (hi - lo) if hi > lo else (0.05 if log else 0.05 * abs(hi) or 0.05)
    return float(lo - pad), float(hi + pad)


def ema_smooth(series: pd.DataFrame, span: int, *, log_space: bool = True) -> pd.DataFrame:
    """Exponential moving average of `value` within each run (kept in order of x). `span` <= 1 is a
    no-op. Smoothing a loss in log space keeps a drop of decades from being smeared upward."""
    if span <= 1 or series.empty:
        return series
    out = series.sort_values(["run_id", "x"]).copy()
    keep = out["kind"] != "diverged"
    vals = out.loc[keep, "value"].astype(np.float64)
    if log_space:
        with np.errstate(divide="ignore", invalid="ignore"):
            vals = np.log10(vals.where(vals > 0))
    smoothed = vals.groupby(out.loc[keep, "run_id"]).transform(lambda s: s.ewm(span=span, ignore_na=True).mean())
    out.loc[keep, "value"] = 10.0**smoothed if log_space else smoothed
    return out


def twin_axes_figure(
    left: pd.DataFrame,
    right: pd.DataFrame,
    *,
    left_label: str,
    right_label: str,
    log_x: bool = True,
    log_left: bool = True,
    right_range: tuple[float, float] | None = (0.0, 1.0),
) -> go.Figure:
    """Two metrics of the same run(s) against step on twin y axes (silent alignment: alignment
    rises before the loss drops). Frames: run_id, x, value. The right axis is linear; with
    `right_range` (the default: alignment lies in [0, 1]) it spans that range with round ticks."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    # One colour per run on both axes (loss solid, alignment dotted with markers): the eye pairs them.
    from plotly.colors import qualitative

    palette = qualitative.Plotly
    runs = list(dict.fromkeys([*left["run_id"], *right["run_id"]]))
    colour = {r: palette[i % len(palette)] for i, r in enumerate(runs)}
    for frame, label, secondary, dash in ((left, left_label, False, "solid"), (right, right_label, True, "dot")):
        for run_id, part in frame.groupby("run_id", sort=False):
            part = part.sort_values("x")
            fig.add_trace(
                go.Scatter(
                    x=part["x"],
                    y=part["value"],
                    mode="lines+markers" if secondary else "lines",
                    name=f"{label} · {run_id}",
                    line={"dash": dash, "color": colour[run_id]},
                    marker={"size": 5},
                    legendgroup=str(run_id),
                ),
                secondary_y=secondary,
            )
    fig.update_xaxes(title_text="step t + 1", **axis(log_x))
    fig.update_yaxes(title_text=left_label, **axis(log_left), secondary_y=False)
    # Plotly's default for an overlaying axis is tickmode "sync": ticks placed at the left (log)
    # axis's gridlines, which on a linear alignment axis read 0.4064, 0.4381, ... Own ticks instead,
    # and no second set of gridlines across the plot.
    right_axis: dict[str, object] = {"type": "linear", "showgrid": False, "tickmode": "auto"}
    if right_range is not None:
        lo, hi = right_range
        pad = 0.02 * (hi - lo)  # a value exactly at an end keeps its whole marker
        right_axis.update(range=[lo - pad, hi + pad], tickmode="linear", tick0=lo, dtick=(hi - lo) / 5)
    fig.update_yaxes(title_text=right_label, secondary_y=True, title_standoff=8, **right_axis)
    # Legend below the plot: on the right it sits on the secondary axis's title and clips it.
    fig.update_layout(
        uirevision=UIREVISION, margin={"t": 10, "r": 60}, legend={"orientation": "h", "y": -0.2, "yanchor": "top"}
    )
    return fig


def lines_figure(
    frame: pd.DataFrame,
    *,
    x_label: str,
    y_label: str,
    log_x: bool = True,
    log_y: bool = True,
    group: str = "label",
    hlines: pd.DataFrame | None = None,
) -> go.Figure:
    """Generic multi-line figure: frame has columns x, value and `group` (one trace per group).
    `hlines` (optional): x, value, label drawn dashed (e.g. the edge of stability 2/(N·η)); with a
    `match` column, a line takes the colour of the first trace whose name contains that text (the
    edge of stability of η=0.1 in the colour of the η=0.1 run)."""
    from plotly.colors import qualitative

    palette = qualitative.Plotly
    fig = go.Figure()
    colours: dict[str, str] = {}
    if log_y:  # e.g. movement is exactly 0 at init: plotly drew it as a line falling off the log axis
        frame = frame[frame["value"] > 0]
    for i, (name, part) in enumerate(frame.groupby(group, sort=False)):
        part = part.sort_values("x")
        colours[str(name)] = palette[i % len(palette)]
        fig.add_trace(
            _line_trace(
                part["x"].to_numpy(dtype=np.float64),
                part["value"].to_numpy(dtype=np.float64),
                mode="lines+markers",
                name=str(name),
                line={"color": colours[str(name)]},
            )
        )
    if hlines is not None:
        for name, part in hlines.groupby("label", sort=False):
            part = part.sort_values("x")
            line: dict[str, str] = {"dash": "dash"}
            if "match" in part:
                key = str(part["match"].iloc[0])
                colour = next((c for trace, c in colours.items() if key in trace), None)
                if colour is not None:
                    line["color"] = colour
            fig.add_trace(go.Scatter(x=part["x"], y=part["value"], mode="lines", name=str(name), line=line))
    fig.update_layout(
        uirevision=UIREVISION,
        margin={"t": 10},
        xaxis={"title": x_label, **axis(log_x)},
        yaxis={"title": y_label, **axis(log_y)},
    )
    return fig
