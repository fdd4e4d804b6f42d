"""Trajectories: loss against step for a row, a column, a cell, the η* ridge or hand-picked runs."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app.logic.figures import ema_smooth, trajectories_figure
from app.logic.overlays import no_runs_message
from app.logic.selection import MODES, nearest, select_runs
from app.logic.source import points_budget
from app.logic.view_state import Field
from app.ui import chart, labeler, pick_sweep, resources, sync_url, url_state

P = "traj"
METRICS = ("train_loss", "test_loss", "test_acc")
SCHEMA = {
    "sweep": Field("str", None),
    "mode": Field("str", "row", choices=tuple(MODES)),
    "gamma": Field("float", None),
    "eta": Field("float", None),
    "runs": Field("list", []),
    "metric": Field("str", "train_loss", choices=METRICS),
    "colour": Field("str", "eta", choices=("gamma", "eta")),
    "smooth": Field("int", 1, minimum=1, maximum=500),
    "logx": Field("bool", True),
    "bands": Field("bool", False),
}

res = resources()
source = res.source
url_state(SCHEMA, P)
st.title("Trajectories")
sweep_id = pick_sweep(source, f"{P}.sweep")
runs = source.runs(sweep_id)
if runs.empty:
    st.info("This sweep has no runs.")
    st.stop()
gammas, etas = sorted(runs["gamma"].unique()), sorted(runs["eta"].unique())
for name, values in (("gamma", gammas), ("eta", etas)):
    key = f"{P}.{name}"
    st.session_state[key] = nearest(values, st.session_state.get(key))

c1, c2, c3 = st.columns(3)
mode = c1.selectbox("Show", list(MODES), key=f"{P}.mode", format_func=labeler(MODES))
if mode in ("row", "cell"):
    c2.selectbox("γ", gammas, key=f"{P}.gamma", format_func=lambda v: f"{v:.3g}")
if mode in ("column", "cell"):
    c3.selectbox("η", etas, key=f"{P}.eta", format_func=lambda v: f"{v:.3g}")
if mode == "pick":
    st.session_state[f"{P}.runs"] = [r for r in st.session_state[f"{P}.runs"] if r in set(runs["run_id"])]
    labels = {r.run_id: f"γ={r.gamma:.3g} η={r.eta:.3g} seed={r.seed} ({r.status})" for r in runs.itertuples()}
    st.multiselect("Runs", runs["run_id"].tolist(), key=f"{P}.runs", format_func=lambda r: labels.get(r, r),
                   placeholder="pick runs")
d1, d2, d3, d4, d5 = st.columns(5)
metric = d1.selectbox("Metric", METRICS, key=f"{P}.metric")
colour = d2.radio("Colour by", ("gamma", "eta"), key=f"{P}.colour", horizontal=True,
                  format_func=labeler({"gamma": "γ", "eta": "η"}))
smooth = d3.number_input("Smoothing (EMA span, steps of the shown series)", 1, 500, key=f"{P}.smooth")
log_x = d4.toggle("log x", key=f"{P}.logx")
bands = d5.toggle("Seed bands", key=f"{P}.bands", help="mean ± std over seeds, per cell")
sync_url(SCHEMA, P)

chosen = select_runs(runs, mode, gamma=st.session_state[f"{P}.gamma"], eta=st.session_state[f"{P}.eta"],
                     picked=st.session_state[f"{P}.runs"])
if chosen.empty:
    st.info(no_runs_message(mode, len(runs), len(st.session_state[f"{P}.runs"])))
    st.stop()
st.caption(f"{len(chosen)} runs · "
           + ", ".join(f"{k}: {v}" for k, v in chosen["status"].value_counts().items()))
series = source.trajectories(chosen["run_id"].tolist(), metric=metric,
                             max_points=points_budget(len(chosen)), log_x=log_x)
# Steps are 0-based; on a log axis step 0 cannot show, so x = t + 1 (the number of updates seen).
series = series.assign(x=series["step"].astype(float) + 1.0)
series = ema_smooth(series, int(smooth), log_space=metric != "test_acc")
band_frame = None
if bands:
    parts = []
    for (g, e), _ in chosen.groupby(["gamma", "eta"]):
        b = source.seed_bands(sweep_id, g, e, metric)
        if not b.empty:
            parts.append(pd.DataFrame({"x": b["step"] + 1.0, "lo": b["mean"] - b["std"].fillna(0),
                                       "hi": b["mean"] + b["std"].fillna(0), "label": f"γ={g:.3g} η={e:.3g}"}))
    band_frame = pd.concat(parts) if parts else None
fig = trajectories_figure(series, chosen, colour_by=colour, log_x=log_x, log_y=metric != "test_acc",
                          y_label=metric, x_label="step t + 1", bands=band_frame)
chart(fig, series.drop(columns=["x"]), key=f"{P}.chart", filename=f"trajectories-{sweep_id}.csv")
with st.expander("Runs shown"):
    st.dataframe(chosen, hide_index=True)
