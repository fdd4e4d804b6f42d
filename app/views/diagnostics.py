"""Diagnostics: kernel alignment vs loss on twin axes (silent alignment), sharpness vs the edge of
stability 2/(N·η), and per-layer weight movement."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app.logic.diagnostics import (
    ALIGNMENTS,
    edge_of_stability,
    label_series,
    movement_metrics,
    unrecorded,
    unrecorded_note,
)
from app.logic.figures import lines_figure, twin_axes_figure
from app.logic.selection import MODES, nearest, select_runs
from app.logic.view_state import Field
from app.ui import chart, labeler, loss_caption, pick_sweep, resources, sync_url, url_state

P = "diag"
SCHEMA = {
    "sweep": Field("str", None),
    "mode": Field("str", "ridge", choices=("ridge", "cell")),
    "gamma": Field("float", None),
    "eta": Field("float", None),
    "alignment": Field("str", "alignment_ntk", choices=ALIGNMENTS),
}
NOT_DRAWN = "This sweep did not record {}: no chart (how to record it: see the note at the top of the page)."
MAX_RUNS = 6  # twin-axis and per-layer plots stop being readable beyond a handful of runs

res = resources()
source = res.source
url_state(SCHEMA, P)
st.title("Diagnostics")
sweep_id = pick_sweep(source, f"{P}.sweep")
runs = source.runs(sweep_id)
if runs.empty:
    st.info("This sweep has no runs.")  # as Trajectories says; the page stopped blank
    st.stop()
for name in ("gamma", "eta"):
    st.session_state[f"{P}.{name}"] = nearest(runs[name].tolist(), st.session_state.get(f"{P}.{name}"))
c1, c2, c3, c4 = st.columns(4)
mode = c1.radio("Runs", ("ridge", "cell"), key=f"{P}.mode", format_func=labeler(MODES))
if mode == "cell":
    c2.selectbox("γ", sorted(runs["gamma"].unique()), key=f"{P}.gamma", format_func=lambda v: f"{v:.3g}")
    c3.selectbox("η", sorted(runs["eta"].unique()), key=f"{P}.eta", format_func=lambda v: f"{v:.3g}")
alignment = c4.selectbox("Alignment", ALIGNMENTS, key=f"{P}.alignment")
sync_url(SCHEMA, P)

chosen = select_runs(runs, mode, gamma=st.session_state[f"{P}.gamma"], eta=st.session_state[f"{P}.eta"], limit=MAX_RUNS)
ids = chosen["run_id"].tolist()
if not ids:
    st.info("No runs to show yet.")
    st.stop()

spec = (source.sweep(sweep_id) or {}).get("spec")
missing = unrecorded(spec)  # costly metrics the sweep never asked for: say so instead of blank charts
if missing:
    st.warning(unrecorded_note(missing, spec))

st.subheader("Silent alignment: alignment rises before the loss drops")
if "alignment" in missing:
    st.info("This sweep did not record alignment: the loss alone is drawn (how to record it: see the note above).")
depth = int(chosen["depth"].dropna().iloc[0]) if chosen["depth"].notna().any() else 3
# Every curve of the page in one storage query (it used to be one query per metric: 3 + L of them).
series = source.trajectories_many(ids, ["train_loss", alignment, "sharpness", *movement_metrics(depth)], max_points=300)
loss = label_series(series["train_loss"], chosen)
align = label_series(series[alignment], chosen)
fig = twin_axes_figure(
    loss.assign(run_id=loss["label"]),
    align.assign(run_id=align["label"]),
    left_label="train_loss",
    right_label=alignment,
)
chart(
    fig,
    pd.concat([loss.assign(metric="train_loss"), align.assign(metric=alignment)]),
    key=f"{P}.align",
    filename=f"alignment-{sweep_id}.csv",
)
loss_caption(source, [sweep_id])

st.subheader("Sharpness against the edge of stability 2/(N·η)")
sharp = label_series(series["sharpness"], chosen)
x_range = (1.0, float(sharp["x"].max()) if not sharp.empty else 1.0)
eos = edge_of_stability(chosen.drop_duplicates("eta"), x_range)
if ((spec or {}).get("train") or {}).get("optimizer") == "adam":  # 2/(N·η) is plain SGD's edge
    eos = eos.iloc[0:0]
    st.caption("An Adam sweep: the edge of stability 2/(N·η) belongs to SGD's step N·η and is not drawn.")
if "sharpness" in missing:
    st.info(NOT_DRAWN.format("sharpness"))
else:
    chart(
        lines_figure(sharp, x_label="step t + 1", y_label="top Hessian eigenvalue", hlines=eos),
        sharp,
        key=f"{P}.sharp",
        filename=f"sharpness-{sweep_id}.csv",
    )

st.subheader("Per-layer movement ‖W_l − W_l(0)‖ / ‖W_l(0)‖")
parts = []
first = chosen.iloc[[0]]
for name in movement_metrics(depth):
    part = label_series(series[name][series[name]["run_id"] == ids[0]], first)
    parts.append(part.assign(label=name))
movement = pd.concat(parts) if parts else pd.DataFrame(columns=["x", "value", "label"])
st.caption(f"run {ids[0]}: γ={first['gamma'].iloc[0]:.3g}, η={first['eta'].iloc[0]:.3g}, seed {first['seed'].iloc[0]}")
if "movement" in missing:
    st.info(NOT_DRAWN.format("movement"))
else:
    chart(
        lines_figure(movement, x_label="step t + 1", y_label="relative movement"),
        movement,
        key=f"{P}.move",
        filename=f"movement-{sweep_id}.csv",
    )
