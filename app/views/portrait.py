"""Phase portrait: the γ–η heatmap of one sweep, with ridge, boundary, fits and theory lines."""

from __future__ import annotations

import time

import numpy as np
import streamlit as st

from app.logic.figures import portrait_figure
from app.logic.grid import heatmap_grid
from app.logic.portrait import (
    AGGS,
    STATS,
    cell_key,
    missing_fit_notes,
    overlay_curves,
    parse_cell,
    ridge_notes,
    ridge_points,
    selected_cell,
    snap_to_cell,
    status_counts,
)
from app.logic.source import newer_line
from app.logic.view_state import Field
from app.ui import chart, labeler, loss_caption, pick_sweep, resources, sync_url, url_state

P = "portrait"
YOUNG_S = 60.0  # a sweep this young refreshes every second while it runs
METRICS = ("train_loss", "test_loss", "test_acc")
SHOW = ("ridge", "boundary", "fits", "theory")
SCHEMA = {
    "sweep": Field("str", None),
    "metric": Field("str", "train_loss", choices=METRICS),
    "stat": Field("str", "tail", choices=tuple(STATS)),  # the tail mean: one batch is noisy (issue 11)
    "agg": Field("str", "mean", choices=AGGS),
    "step": Field("int", 0, minimum=0),
    "threshold": Field("float", 0.05, minimum=0.0),
    "show": Field("list", list(SHOW), choices=SHOW),
    "live": Field("bool", True),
    "cell": Field("str", None),  # the selected cell as "γ,η" (repr floats): a copied link keeps it
}

res = resources()
source = res.source
url_state(SCHEMA, P)
# The heatmap is what the page is for: at 1280×800 it started below the fold. A small heading and
# the controls in two rows (the sweep beside the statistic; the step or threshold beside the
# overlays) keep its top in view; the notes about the ridge and reruns go below it.
st.subheader("Phase portrait")
if launched := st.session_state.pop("portrait.launched", None):  # arrived from Launch
    st.success(f"Launched sweep {launched}: its portrait fills in as its runs finish.")
c0, c1, c2, c3, c4 = st.columns([2.3, 1.1, 1.9, 1.0, 1.1], vertical_alignment="bottom")
sweep_id = pick_sweep(source, f"{P}.sweep", where=c0)
sweep = source.sweep(sweep_id) or {}
spec = sweep.get("spec", {})
depth = int(spec.get("model", {}).get("depth", 3))
steps = int(spec.get("train", {}).get("steps", 1))
c1.selectbox("Metric", METRICS, key=f"{P}.metric")
c2.selectbox("Statistic", list(STATS), key=f"{P}.stat", format_func=labeler(STATS))
c3.selectbox("Over seeds", AGGS, key=f"{P}.agg")
c4.toggle("Live", key=f"{P}.live", help="Refresh every few seconds while runs are going")
stat = st.session_state[f"{P}.stat"]
d1, d2 = st.columns([1, 2], vertical_alignment="bottom") if stat in ("at_step", "steps_to") else (st, st)
if stat == "at_step":
    st.session_state[f"{P}.step"] = min(int(st.session_state[f"{P}.step"]), max(steps - 1, 0))
    d1.slider("Step t", 0, max(steps - 1, 1), key=f"{P}.step")
if stat == "steps_to":
    d1.number_input("Threshold (first step with metric ≤ threshold)", min_value=0.0, format="%g", key=f"{P}.threshold")
d2.multiselect("Overlays", SHOW, key=f"{P}.show", placeholder="none")
sync_url(SCHEMA, P)


def draw() -> None:
    metric = st.session_state[f"{P}.metric"]
    frame = source.heatmap(
        sweep_id,
        metric=metric,
        stat=stat,
        agg=st.session_state[f"{P}.agg"],
        step=int(st.session_state[f"{P}.step"]) if stat == "at_step" else None,
        threshold=float(st.session_state[f"{P}.threshold"]) if stat == "steps_to" else None,
    )
    grid = heatmap_grid(frame)
    options = [cell_key(g, e) for g in grid.gammas for e in grid.etas]
    # A click in the portrait arrives as the chart's selection state, before the figure is drawn
    # again, so the outline below follows it at once. Only a new click picks the cell: the old one
    # stays in the chart's state and must not undo a cell chosen later in the box below.
    clicked = selected_cell(st.session_state.get(f"{P}.chart"))
    cell = None if clicked is None else snap_to_cell(grid, *clicked)
    clicked_key = None if cell is None else cell_key(*cell)
    if clicked_key != st.session_state.get(f"{P}.clicked"):
        st.session_state[f"{P}.clicked"] = clicked_key
        if clicked_key is not None:
            st.session_state[f"{P}.cell"] = clicked_key
    if st.session_state.get(f"{P}.cell") not in options:  # a stale or hand-edited link: no cell
        st.session_state[f"{P}.cell"] = None
    current = st.session_state[f"{P}.cell"]
    higher_better = metric == "test_acc" and stat != "steps_to"
    curves, fits = overlay_curves(
        grid, depth, show=tuple(st.session_state[f"{P}.show"]), lower_is_better=not higher_better
    )
    label = "steps to threshold" if stat == "steps_to" else f"{metric} ({STATS[stat]}, {st.session_state[f'{P}.agg']})"
    fig = portrait_figure(
        grid,
        value_label=label,
        log_value=metric != "test_acc",
        curves=curves,
        selected=None if current is None else parse_cell(current),
    )
    provisional = int(np.isfinite(grid.live).sum())
    st.caption(
        status_counts(grid)
        + (f" (faded: the latest value of {provisional} cells still training)" if provisional else "")
        + (" · " if fits else "")
        + " · ".join(f.label() for f in fits)
    )
    chart(fig, frame, key=f"{P}.chart", filename=f"portrait-{sweep_id}.csv", select=True)
    if metric != "test_acc" and stat != "steps_to":
        loss_caption(source, [sweep_id])
    if {"ridge", "fits"} & set(st.session_state[f"{P}.show"]):
        for note in ridge_notes(ridge_points(grid, lower_is_better=not higher_better)):
            st.caption(note)
    if "fits" in st.session_state[f"{P}.show"]:  # say why a fit is missing rather than draw nothing
        for note in missing_fit_notes(grid, lower_is_better=not higher_better):
            st.caption(note)
    rerun = int(grid.n_newer.sum()) if grid.n_newer is not None else 0
    if rerun:  # a finished attempt stays drawn while a newer one trains (circled dots)
        st.caption(f"◉ {rerun} seed(s) are training again: their cells show the finished attempt until it ends")
    elif newer_line(sweep.get("newer") or {}):
        st.caption(newer_line(sweep["newer"]))
    chosen = st.selectbox(
        "Cell (or click one in the portrait)",
        [None, *options],
        key=f"{P}.cell",
        format_func=lambda c: "—" if c is None else "γ={:.3g}, η={:.3g}".format(*parse_cell(c)),
        # Streamlit shows the placeholder, not format_func(None), when the value is None
        placeholder="—",
    )
    sync_url(SCHEMA, P)  # the click above happened after the page's first sync
    if chosen is not None:
        g, e = parse_cell(chosen)
        gi, ei = int(np.argmin(abs(grid.gammas - g))), int(np.argmin(abs(grid.etas - e)))
        st.markdown(
            f"**Cell γ={g:.3g}, η={e:.3g}** — {grid.status[ei, gi]}, "
            f"{grid.n_done[ei, gi]}/{grid.n_seeds[ei, gi]} seeds done"
        )
        st.page_link(
            "views/trajectories.py",
            label="Open this cell's trajectories",
            icon=":material/show_chart:",
            query_params={"sweep": sweep_id, "mode": "cell", "gamma": repr(g), "eta": repr(e)},
        )


if st.session_state[f"{P}.live"] and sweep.get("status") in ("queued", "running"):
    # every second for a young sweep (a quick demo ends in seconds: a 3 s tick showed it late), then 3 s
    young = time.time() - float(sweep.get("created") or 0.0) < YOUNG_S
    st.fragment(run_every=1.0 if young else 3.0)(draw)()
else:
    draw()
