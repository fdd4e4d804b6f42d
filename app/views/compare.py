"""Compare: two sweeps' phase portraits side by side on the same axes and colour scale, or their
difference log10(A) − log10(B) on the cells they share."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app.logic.figures import portrait_figure
from app.logic.grid import difference_grid, heatmap_grid, shared_log_range
from app.logic.portrait import AGGS
from app.logic.portrait import STATS as STAT_LABELS
from app.logic.view_state import Field
from app.ui import chart, labeler, loss_caption, pick_sweep, resources, sweep_labels, sync_url, url_state

P = "compare"
STATS = ("final", "best")
SCHEMA = {
    "a": Field("str", None),
    "b": Field("str", None),
    "metric": Field("str", "train_loss", choices=("train_loss", "test_loss")),
    "stat": Field("str", "final", choices=STATS),
    "agg": Field("str", "mean", choices=AGGS),
    "view": Field("str", "side", choices=("side", "diff")),
}

res = resources()
source = res.source
url_state(SCHEMA, P)
st.title("Compare two sweeps")
c1, c2 = st.columns(2)
a = pick_sweep(source, f"{P}.a", "Sweep A", 0, c1)
b = pick_sweep(source, f"{P}.b", "Sweep B", 1, c2)
labels = sweep_labels(source.sweeps())
d1, d2, d3, d4 = st.columns(4)
metric = d1.selectbox("Metric", ("train_loss", "test_loss"), key=f"{P}.metric")
stat = d2.selectbox("Statistic", STATS, key=f"{P}.stat", format_func=labeler(STAT_LABELS))  # as the portrait
agg = d3.selectbox("Over seeds", AGGS, key=f"{P}.agg")
view = d4.radio(
    "View",
    ("side", "diff"),
    key=f"{P}.view",
    horizontal=True,
    format_func=labeler({"side": "side by side", "diff": "difference"}),
)
sync_url(SCHEMA, P)

fa = source.heatmap(a, metric=metric, stat=stat, agg=agg)
fb = source.heatmap(b, metric=metric, stat=stat, agg=agg)
ga, gb = heatmap_grid(fa), heatmap_grid(fb)
data = pd.concat([fa.assign(sweep=a), fb.assign(sweep=b)])
if view == "side":
    rng = shared_log_range(ga, gb)
    left, right = st.columns(2)
    with left:
        chart(
            portrait_figure(ga, value_label=metric, colour_range=rng, title=f"A: {labels[a]}"),
            fa,
            key=f"{P}.a.chart",
            filename=f"compare-{a}.csv",
        )
    with right:
        chart(
            portrait_figure(gb, value_label=metric, colour_range=rng, title=f"B: {labels[b]}"),
            fb,
            key=f"{P}.b.chart",
            filename=f"compare-{b}.csv",
        )
else:
    diff = difference_grid(ga, gb)
    fig = portrait_figure(
        diff,
        value_label=f"log10 {metric} A − B",
        log_value=False,
        title="log10(A) − log10(B): negative = A better",
        centre_zero=True,  # white at 0, blue = A better; diverged cells black, off the scale
    )
    chart(fig, data, key=f"{P}.diff", filename=f"compare-{a}-{b}.csv")
if stat != "steps_to":
    loss_caption(source, [a, b])
