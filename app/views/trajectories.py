"""Trajectories: loss against step for a row, a column, a cell, the η* ridge or hand-picked runs --
these from several sweeps at once when other sweeps are added (one chart to compare them)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app.logic.figures import ema_smooth, trajectories_figure
from app.logic.overlays import no_runs_message
from app.logic.selection import MODES, nearest, picked_from, select_runs
from app.logic.source import points_budget
from app.logic.view_state import Field
from app.ui import chart, labeler, loss_caption, pick_sweep, resources, sweep_labels, sync_url, url_state

P = "traj"
METRICS = ("train_loss", "test_loss", "test_acc")
SCHEMA = {
    "sweep": Field("str", None),
    "mode": Field("str", "row", choices=tuple(MODES)),
    "gamma": Field("float", None),
    "eta": Field("float", None),
    "runs": Field("list", []),
    "more": Field("list", []),  # other sweeps whose runs can be hand-picked too
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
    others = sweep_labels(source.sweeps())
    others.pop(sweep_id, None)
    st.session_state[f"{P}.more"] = [s for s in st.session_state.get(f"{P}.more", []) if s in others]
    more = st.multiselect("Runs of other sweeps too", list(others), key=f"{P}.more", format_func=labeler(others),
                          placeholder="add sweeps to pick from", help="Compare runs of several sweeps in one chart")
    runs = picked_from(runs, sweep_id, {s: source.runs(s) for s in more}, source.sweeps())
    st.session_state[f"{P}.runs"] = [r for r in st.session_state[f"{P}.runs"] if r in set(runs["run_id"])]
    labels = {r.run_id: f"{r.sweep_name + ' · ' if more else ''}γ={r.gamma:.3g} η={r.eta:.3g} seed={r.seed} "
              f"({r.status})" for r in runs.itertuples()}
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
    by_sweep = chosen.get("source_sweep", pd.Series(sweep_id, index=chosen.index)).fillna(sweep_id)
    for (sid, g, e), _ in chosen.assign(source_sweep=by_sweep).groupby(["source_sweep", "gamma", "eta"]):
        b = source.seed_bands(str(sid), g, e, metric)
        if not b.empty:
            parts.append(pd.DataFrame({"x": b["step"] + 1.0, "lo": b["mean"] - b["std"].fillna(0),
                                       "hi": b["mean"] + b["std"].fillna(0), "label": f"γ={g:.3g} η={e:.3g}"}))
    band_frame = pd.concat(parts) if parts else None
fig = trajectories_figure(series, chosen, colour_by=colour, log_x=log_x, log_y=metric != "test_acc",
                          y_label=metric, x_label="step t + 1", bands=band_frame)
chart(fig, series.drop(columns=["x"]), key=f"{P}.chart", filename=f"trajectories-{sweep_id}.csv")
if metric != "test_acc":
    loss_caption(source, chosen.get("source_sweep", pd.Series(dtype=object)).dropna().tolist() or [sweep_id])
with st.expander("Runs shown"):
    st.dataframe(chosen, hide_index=True)
