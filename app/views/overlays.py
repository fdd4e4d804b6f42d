"""Overlays: loss against a reparameterized time for the runs at η* of each γ (or a chosen set),
with the collapse score of each time variable so the user sees which one collapses the curves, the
τ range each score compares (with its curve count and whether the loss drops there), a γ range
(the rich side by default) and smoothing."""

from __future__ import annotations

import streamlit as st

from app.logic.figures import ema_smooth, trajectories_figure
from app.logic.overlays import (
    TIME_VARIABLES,
    best_time_variable,
    collapse_details,
    default_gamma_range,
    expression_message,
    no_runs_message,
    rescale_time,
    score_table,
)
from app.logic.selection import MODES, nearest, select_runs
from app.logic.source import points_budget
from app.logic.view_state import Field
from app.ui import chart, labeler, loss_caption, pick_sweep, resources, sync_url, url_state

P = "overlay"
CHOICES = (*TIME_VARIABLES, "custom")
SCHEMA = {
    "sweep": Field("str", None),
    "x": Field("str", "eta_t_over_gamma", choices=CHOICES),
    "expr": Field("str", "eta * t / gamma"),
    "mode": Field("str", "ridge", choices=("ridge", "pick")),
    "runs": Field("list", []),
    "metric": Field("str", "train_loss", choices=("train_loss", "test_loss")),
    "gmin": Field("float", None),  # the γ range drawn and scored (default: the rich side, γ > 1)
    "gmax": Field("float", None),
    "smooth": Field("int", 1, minimum=1, maximum=500),
}

res = resources()
source = res.source
url_state(SCHEMA, P)
st.title("Overlays")
sweep_id = pick_sweep(source, f"{P}.sweep")
runs = source.runs(sweep_id)
c1, c2, c3 = st.columns(3)
mode = c1.radio("Runs", ("ridge", "pick"), key=f"{P}.mode", format_func=labeler(MODES))
metric = c2.selectbox("Metric", ("train_loss", "test_loss"), key=f"{P}.metric")
x_choice = c3.selectbox("Time variable", CHOICES, key=f"{P}.x",
                        format_func=lambda k: TIME_VARIABLES.get(k, "custom expression"))
if x_choice == "custom":
    st.text_input("Expression over t, eta, gamma, L, N (+ - * / ^, log exp sqrt)", key=f"{P}.expr")
if mode == "pick":
    keep = set(runs["run_id"])
    st.session_state[f"{P}.runs"] = [r for r in st.session_state[f"{P}.runs"] if r in keep]
    labels = {r.run_id: f"γ={r.gamma:.3g} η={r.eta:.3g} seed={r.seed}" for r in runs.itertuples()}
    st.multiselect("Runs", runs["run_id"].tolist(), key=f"{P}.runs", format_func=lambda r: labels.get(r, r),
                   placeholder="pick runs")
gammas = sorted(float(g) for g in runs["gamma"].dropna().unique()) if not runs.empty else []
e1, e2 = st.columns([3, 1])
g_lo, g_hi = (min(gammas), max(gammas)) if gammas else (0.0, 0.0)
if len(gammas) >= 2:
    lo, hi = default_gamma_range(gammas)
    current = st.session_state.get(f"{P}.grange")
    if not (isinstance(current, tuple | list) and len(current) == 2 and set(current) <= set(gammas)):
        url_lo, url_hi = st.session_state[f"{P}.gmin"], st.session_state[f"{P}.gmax"]
        st.session_state[f"{P}.grange"] = (lo if url_lo is None else nearest(gammas, url_lo),
                                           hi if url_hi is None else nearest(gammas, url_hi))
    picked_range: tuple[float, float] = e1.select_slider(  # a (low, high) pair: the state holds two values
        "γ range", options=gammas, key=f"{P}.grange", format_func=lambda g: f"{g:.3g}",
        help="The rich side (γ > 1) by default: only large-γ curves are expected to collapse in η·t/γ",
    )  # type: ignore[assignment]
    g_lo, g_hi = picked_range
st.session_state[f"{P}.gmin"], st.session_state[f"{P}.gmax"] = g_lo, g_hi
smooth = e2.number_input("Smoothing (EMA span)", 1, 500, key=f"{P}.smooth",
                         help="Smooths each curve before scoring and drawing, as on Trajectories")
sync_url(SCHEMA, P)

chosen = select_runs(runs, mode, picked=st.session_state[f"{P}.runs"]) if not runs.empty else runs
if gammas:
    inside = chosen["gamma"].between(g_lo, g_hi)
    if (~inside).any():
        st.caption(f"{int((~inside).sum())} runs outside the γ range {g_lo:.3g} … {g_hi:.3g} are left out")
    chosen = chosen[inside]
ids = chosen["run_id"].tolist()
if not ids:
    st.info(no_runs_message(mode, len(runs), len(st.session_state[f"{P}.runs"])))
    st.stop()
x_key = st.session_state[f"{P}.expr"] if x_choice == "custom" else x_choice
# One storage query with x = t; the other named variables are per-run rescalings of it. A few
# thousand points per figure (log-spaced buckets) keep the collapse scores and the browser fast.
budget = points_budget(len(ids), total=8000)
frame_t = ema_smooth(source.overlay(ids, metric=metric, x="t", max_points=budget).assign(kind="point"), int(smooth))
depth = chosen.set_index("run_id")["depth"].fillna(3)
frames = {key: rescale_time(frame_t, depth, key) for key in TIME_VARIABLES}
details = {TIME_VARIABLES[key]: collapse_details(f) for key, f in frames.items()}
if x_choice == "custom":
    try:
        frame = source.overlay(ids, metric=metric, x=x_key, max_points=budget)
    except ValueError as exc:  # storage's ExpressionError: show it at the field, keep the named variables' scores
        st.error(expression_message(exc))
        st.dataframe(score_table({k: (d.score if d else None, why) for k, (d, why) in details.items()}, None),
                     hide_index=True)
        st.stop()
    frame = ema_smooth(frame.assign(kind="point"), int(smooth))
    details[f"custom: {x_key}"] = collapse_details(frame)
else:
    frame = frames[x_choice]
scored = {k: (d.score if d else None, why) for k, (d, why) in details.items()}
ranges = {k: d.range_text() for k, (d, _) in details.items() if d is not None}
best = best_time_variable({k: score for k, (score, _) in scored.items()})
st.dataframe(score_table(scored, best, ranges), hide_index=True)
series = frame.assign(kind="point")
fig = trajectories_figure(series, chosen, colour_by="gamma", log_x=True, log_y=True, y_label=metric,
                          x_label=TIME_VARIABLES.get(x_choice, x_key))
chart(fig, frame, key=f"{P}.chart", filename=f"overlay-{sweep_id}.csv")
loss_caption(source, [sweep_id])
