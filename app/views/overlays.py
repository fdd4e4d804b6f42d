"""Overlays: loss against a reparameterized time for the runs at η* of each γ (or a chosen set),
with the collapse score of each time variable so the user sees which one collapses the curves."""

from __future__ import annotations

import streamlit as st

from app.logic.figures import trajectories_figure
from app.logic.overlays import (
    TIME_VARIABLES,
    best_time_variable,
    collapse_with_reason,
    expression_message,
    no_runs_message,
    rescale_time,
    score_table,
)
from app.logic.selection import MODES, select_runs
from app.logic.source import points_budget
from app.logic.view_state import Field
from app.ui import chart, labeler, pick_sweep, resources, sync_url, url_state

P = "overlay"
CHOICES = (*TIME_VARIABLES, "custom")
SCHEMA = {
    "sweep": Field("str", None),
    "x": Field("str", "eta_t_over_gamma", choices=CHOICES),
    "expr": Field("str", "eta * t / gamma"),
    "mode": Field("str", "ridge", choices=("ridge", "pick")),
    "runs": Field("list", []),
    "metric": Field("str", "train_loss", choices=("train_loss", "test_loss")),
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
sync_url(SCHEMA, P)

chosen = select_runs(runs, mode, picked=st.session_state[f"{P}.runs"]) if not runs.empty else runs
ids = chosen["run_id"].tolist()
if not ids:
    st.info(no_runs_message(mode, len(runs), len(st.session_state[f"{P}.runs"])))
    st.stop()
x_key = st.session_state[f"{P}.expr"] if x_choice == "custom" else x_choice
# One storage query with x = t; the other named variables are per-run rescalings of it. A few
# thousand points per figure (log-spaced buckets) keep the collapse scores and the browser fast.
budget = points_budget(len(ids), total=8000)
frame_t = source.overlay(ids, metric=metric, x="t", max_points=budget)
depth = chosen.set_index("run_id")["depth"].fillna(3)
frames = {key: rescale_time(frame_t, depth, key) for key in TIME_VARIABLES}
scored = {TIME_VARIABLES[key]: collapse_with_reason(f) for key, f in frames.items()}
if x_choice == "custom":
    try:
        frame = source.overlay(ids, metric=metric, x=x_key, max_points=budget)
    except ValueError as exc:  # storage's ExpressionError: show it at the field, keep the named variables' scores
        st.error(expression_message(exc))
        st.dataframe(score_table(scored, None), hide_index=True)
        st.stop()
    scored[f"custom: {x_key}"] = collapse_with_reason(frame)
else:
    frame = frames[x_choice]
best = best_time_variable({k: score for k, (score, _) in scored.items()})
st.dataframe(score_table(scored, best), hide_index=True)
series = frame.assign(kind="point")
fig = trajectories_figure(series, chosen, colour_by="gamma", log_x=True, log_y=True, y_label=metric,
                          x_label=TIME_VARIABLES.get(x_choice, x_key))
chart(fig, frame, key=f"{P}.chart", filename=f"overlay-{sweep_id}.csv")
