"""Runs: every sweep (owner, created, progress by status, executor) and the runs of one, with filters
and actions: cancel, rerun, add seeds, clone-and-edit. Counts refresh live."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app.logic.source import LIVE, filter_runs, newer_line, progress_line, with_progress
from app.logic.view_state import Field
from app.ui import csv_bytes, labeler, read_only_help, read_only_notice, resources, sync_url, url_state
from storage.liveness import overdue_line

P = "runs"
STATUSES = ("queued", "running", "done", "diverged", "failed", "cancelled", "lost")
SCHEMA = {"sweep": Field("str", None), "status": Field("list", [], choices=STATUSES), "q": Field("str", "")}

COUNTS = ("n_runs", *STATUSES)  # the sweeps table's per-status counts
# Wide tables were clipped at 1280 px (their horizontal scroll bar hidden until hovered): each table
# shows the columns that fit, the rest on demand (all of them in the CSV).
SWEEP_FIRST = ("sweep_id", "name", "owner", "created", "status", "progress", "n_runs")
SWEEP_IF_VARIED = ("executor", "device")
RUN_ON_DEMAND = (
    "attempt",
    "shown_attempt",
    "worker",
    "best_train_loss",
    "final_test_loss",
    "final_test_acc",
    "width",
    "depth",
)  # the runs table's columns shown when picked under "More columns"
RUN_IF_ANY = ("diverged_step", "error", "newer")  # shown when some row has one


def _filled(frame: pd.DataFrame, column: str) -> bool:
    """Whether some row of `column` holds something (not empty, and not 0 for a count)."""
    values = frame[column]
    empty = values.isna() | values.astype(str).isin(["", "None", "nan", "NaT"])
    if column in COUNTS:
        empty |= values.isin([0])
    return not bool(empty.all())


def sweep_columns(sweeps: pd.DataFrame) -> list[str]:
    """The sweeps table's columns: the first ones, then the filled rest (a status count some sweep has; the
    executor and device only where sweeps differ in them)."""
    rest = [
        c
        for c in sweeps.columns
        if c not in SWEEP_FIRST
        and _filled(sweeps, c)
        and (c not in SWEEP_IF_VARIED or sweeps[c].astype(str).nunique() > 1)
    ]
    return [c for c in SWEEP_FIRST if c in sweeps] + rest


def narrow(frame: pd.DataFrame) -> dict:
    """Narrow columns for numbers."""
    return {c: st.column_config.Column(width="small") for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])}


res = resources()
source = res.source
settings = res.settings
url_state(SCHEMA, P)
st.title("Runs")


@st.fragment(run_every=3.0)
def sweeps_table() -> None:
    sweeps = source.sweeps()
    if sweeps.empty:
        st.info("No sweeps yet: launch one on the Launch page.")
        return
    st.dataframe(
        sweeps,
        hide_index=True,
        width="stretch",
        column_order=sweep_columns(sweeps),
        column_config={
            **narrow(sweeps),
            "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, width="small"),
            "created": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm"),
        },
    )


sweeps_table()
sweeps = source.sweeps()
if sweeps.empty:
    st.stop()
labels = {r.sweep_id: f"{r.name} · {r.owner} · {r.sweep_id}" for r in sweeps.itertuples()}
if st.session_state.get(f"{P}.sweep") not in labels:
    st.session_state[f"{P}.sweep"] = sweeps["sweep_id"].iloc[0]
sweep_id = st.selectbox("Sweep", list(labels), key=f"{P}.sweep", format_func=labeler(labels))
f1, f2, f3 = st.columns([2, 1, 2])
f1.multiselect("Status", STATUSES, key=f"{P}.status", placeholder="all statuses")
f2.text_input("Run id contains", key=f"{P}.q")
f3.multiselect(
    "More columns",
    RUN_ON_DEMAND,
    key=f"{P}.cols",
    placeholder="e.g. worker, best_train_loss",
    help="The runs table shows the columns that fit; the CSV has them all",
)
sync_url(SCHEMA, P)

read_only = read_only_notice(res, "cancelling, rerunning and adding seeds")
off = read_only_help(res)  # the reason, as the disabled buttons' tooltip
a1, a2, a3, a4, a5 = st.columns(5)
if a1.button("Cancel sweep", key=f"{P}.cancel", disabled=read_only, help=off):
    from tasks.api import cancel, shared_active_runs

    shared = shared_active_runs(settings, sweep_id)  # before: afterwards they are no longer active
    cancel(settings, sweep_id)
    st.toast(f"Cancel requested for {sweep_id}")
    if shared:  # a run belongs to every sweep that launched its cell: it stops for all of them
        others = ", ".join(f"{k} run(s) of sweep {sid}" for sid, k in sorted(shared.items()))
        st.warning(f"These runs are shared with other sweeps, so this also stopped {others}.")
if a2.button(
    "Rerun unfinished", key=f"{P}.rerun", disabled=read_only, help=off or "Runs that failed, were cancelled or lost"
):
    from engine.config import ConfigError
    from tasks.api import rerun

    # no device: tasks.api reruns on the sweep's launch device (a GPU sweep goes back to the gpu queue)
    try:
        rerun(settings, sweep_id)
        st.toast(f"Rerun queued for {sweep_id}")
    except ConfigError as exc:  # e.g. a GPU sweep and no GPU for local workers: refused, nothing reset
        st.error(str(exc))
extra = a3.text_input(
    "Seeds to add", key=f"{P}.seeds", placeholder="e.g. 2, 3", label_visibility="collapsed", disabled=read_only
)
if a4.button("Add seeds", key=f"{P}.addseeds", disabled=read_only, help=off):
    try:
        seeds = [int(s) for s in extra.replace(",", " ").split()]
    except ValueError:
        st.error(f"Seeds to add: whole numbers separated by commas (got {extra!r})")
        seeds = []
    if seeds:
        from engine.config import ConfigError
        from tasks.api import add_seeds

        try:  # on the sweep's launch device, as a rerun
            add_seeds(settings, sweep_id, seeds)
            st.toast(f"Added seeds {seeds}")
        except ConfigError as exc:  # a bad seed, too many cells, a GPU local workers lack: nothing stored
            st.error(str(exc))
if a5.button("Clone and edit", key=f"{P}.clone"):
    sweep = source.sweep(sweep_id) or {}
    st.session_state["launch.clone"] = dict(sweep.get("spec", {}))
    st.switch_page("views/launch.py")


total_steps = int((source.sweep(sweep_id) or {}).get("spec", {}).get("train", {}).get("steps", 0)) or None


@st.fragment(run_every=3.0)
def runs_table() -> None:
    runs = source.runs(sweep_id)
    # The registry learns steps_done when a run ends; until then the metric store knows how far it
    # got (one query for all running runs, none when nothing runs).
    live = runs.loc[runs["status"].isin(LIVE), "run_id"].tolist()
    last = source.last_steps(live) if live else None
    runs = with_progress(runs, last, total_steps)
    shown = filter_runs(runs, statuses=st.session_state[f"{P}.status"], text=st.session_state[f"{P}.q"])
    st.caption(f"{len(shown):,} of {len(runs):,} runs")
    st.caption(progress_line(runs, total_steps))
    if runs["newer"].astype(bool).any():  # the table shows a finished attempt; `newer` says which is newer
        st.caption(newer_line((source.sweep(sweep_id) or {}).get("newer") or {}))
    if live and last is None:
        st.caption("Progress of running runs is unavailable: another process holds the metric store.")
    if live and (late := overdue_line(source.registry.get_runs(live), settings)):  # silent before turning lost
        st.warning(late, icon=":material/schedule:")
    extra = st.session_state.get(f"{P}.cols") or []
    order = [
        c
        for c in shown.columns
        if c in extra or (c not in RUN_ON_DEMAND and (c not in RUN_IF_ANY or _filled(shown, c)))
    ]
    st.dataframe(
        shown,
        hide_index=True,
        width="stretch",
        column_order=order,
        column_config={
            **narrow(shown),
            "progress": st.column_config.ProgressColumn(
                "progress",
                min_value=0.0,
                max_value=1.0,
                format="percent",
                help=f"steps done of {total_steps:,}" if total_steps else None,
            ),
        },
    )
    st.download_button(
        "Download runs (CSV)", csv_bytes(shown), file_name=f"runs-{sweep_id}.csv", mime="text/csv", key=f"{P}.csv"
    )


runs_table()
st.page_link(
    "views/portrait.py",
    label="Phase portrait of this sweep",
    icon=":material/grid_on:",
    query_params={"sweep": sweep_id},
)
