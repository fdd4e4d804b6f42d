"""Runs: every sweep (owner, tags, created, progress by status, executor), filtered and searched, and
the runs of one, with actions: cancel, rerun, add seeds, clone-and-edit; its details (name, tags,
notes, times), archive/restore, purge and history. Counts refresh live. Actions act as the logged-in
user (app/auth.py); those only the launcher or an admin may take are disabled for others, the reason
(tasks.access.why_not) in their tooltip."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from app.auth import current_actor
from app.logic.source import LIVE, eta_seconds, filter_runs, filter_sweeps, newer_line, progress_line, with_progress
from app.logic.view_state import Field
from app.ui import csv_bytes, labeler, read_only_help, read_only_notice, resources, sync_url, url_state
from storage.liveness import overdue_line
from tasks.access import why_not

P = "runs"
STATUSES = ("queued", "running", "done", "diverged", "failed", "cancelled", "lost")
SWEEP_STATUSES = ("queued", "running", "done", "cancelled", "failed", "empty")  # storage.registry.sweep_rollup
SCHEMA = {
    "sweep": Field("str", None),
    "status": Field("list", [], choices=STATUSES),
    "q": Field("str", ""),
    # the sweeps table's filters
    "find": Field("str", ""),
    "tag": Field("list", []),
    "owner": Field("list", []),
    "state": Field("list", [], choices=SWEEP_STATUSES),
    "arch": Field("list", []),
    "dataset": Field("list", []),
    "since": Field("str", ""),  # YYYY-MM-DD
    "until": Field("str", ""),
    "archived": Field("bool", False),
}

COUNTS = ("n_runs", *STATUSES)  # the sweeps table's per-status counts
# Wide tables were clipped at 1280 px (their horizontal scroll bar hidden until hovered): each table
# shows the columns that fit, the rest on demand (all of them in the CSV).
SWEEP_FIRST = ("sweep_id", "name", "owner", "created", "status", "progress", "runs")
SWEEP_IF_VARIED = ("executor", "device", "arch", "dataset")
SWEEP_DETAILS = ("started", "finished", "duration_s")  # shown in the Details expander, not the table
RUN_ON_DEMAND = (
    "steps_done",  # the progress column shows it (as a share; the number in its tooltip and the CSV)
    "attempt",
    "shown_attempt",
    "worker",
    "started",
    "ended",
    "duration_s",
    "tail_train_loss",
    "best_train_loss",
    "final_test_loss",
    "final_test_acc",
    "width",
    "depth",
)  # the runs table's columns shown when picked under "More columns"
RUN_IF_ANY = ("diverged_step", "error", "newer")  # shown when some row has one
LOSS_COLUMNS = ("tail_train_loss", "final_train_loss", "best_train_loss", "final_test_loss")


def _filled(frame: pd.DataFrame, column: str) -> bool:
    """Whether some row of `column` holds something (not empty, and not 0 for a count)."""
    values = frame[column]
    empty = values.isna() | values.astype(str).isin(["", "None", "nan", "NaT", "[]"])
    if column in COUNTS:
        empty |= values.isin([0])
    return not bool(empty.all())


def sweep_columns(sweeps: pd.DataFrame) -> list[str]:
    """The sweeps table's columns: the first ones, then the filled rest (tags some sweep has; the
    executor, device, architecture and dataset only where sweeps differ in them). The per-status
    counts are one `runs` text column (runs_text): a column each clipped the table at 1280 px once a
    sweep had runs in five states."""
    rest = [
        c
        for c in sweeps.columns
        if c not in SWEEP_FIRST
        and c not in SWEEP_DETAILS
        and c not in COUNTS
        and _filled(sweeps, c)
        and (c not in SWEEP_IF_VARIED or sweeps[c].astype(str).nunique() > 1)
    ]
    return [c for c in SWEEP_FIRST if c in sweeps] + rest


def runs_text(row: Any) -> str:
    """'12: 9 done, 2 diverged, 1 failed' -- a sweep's runs by status, in STATUSES order."""
    parts = [f"{int(row[s])} {s}" for s in STATUSES if s in row and pd.notna(row[s]) and int(row[s])]
    total = int(row["n_runs"]) if pd.notna(row.get("n_runs")) else 0
    return f"{total}: " + ", ".join(parts) if parts else str(total)


def narrow(frame: pd.DataFrame) -> dict:
    """Narrow columns for numbers."""
    return {c: st.column_config.Column(width="small") for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])}


def duration_text(seconds: float | None) -> str:
    """'1 h 02 min', '3 min 05 s', '42 s'; '—' when unknown."""
    if seconds is None or pd.isna(seconds):
        return "—"
    total = int(round(float(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def spec_text(spec: dict[str, Any]) -> str:
    """The stored spec as the TOML file `gamma-lab sweep` reads (SweepSpec.to_toml); a spec this
    version no longer reads is shown as stored (JSON), with why."""
    import json

    from engine.config import ConfigError
    from tasks.spec import SweepSpec

    try:
        return SweepSpec.from_dict(spec).to_toml()
    except (ConfigError, TypeError) as exc:
        return f"# not a spec this gamma-lab reads ({exc}); as stored:\n" + json.dumps(spec, indent=2)


def when_text(stamp: Any) -> str:
    return "—" if stamp is None or pd.isna(stamp) else pd.Timestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


def _day(text: Any) -> dt.date | None:
    """A URL date (YYYY-MM-DD) as a date; None for nothing or anything else."""
    if isinstance(text, dt.date):
        return text
    try:
        return dt.date.fromisoformat(str(text)) if text else None
    except ValueError:
        return None


def _options(values: Any, name: str) -> list[str]:
    """A filter's choices: the values the sweeps have, plus what is picked already (a link may name one
    no sweep has now; a multiselect refuses a value it does not offer)."""
    return sorted({str(v) for v in values if str(v)} | set(st.session_state.get(f"{P}.{name}") or []))


def _flash(message: str) -> None:
    """Say `message` on the next run (a toast drawn just before st.rerun is lost) and rerun."""
    st.session_state[f"{P}.flash"] = message
    st.rerun()


res = resources()
source = res.source
settings = res.settings
actor = current_actor()
url_state(SCHEMA, P)
for bound in ("since", "until"):  # the URL holds text; the date picker holds a date
    st.session_state[f"{P}.{bound}"] = _day(st.session_state.get(f"{P}.{bound}"))
st.title("Runs")
if flash := st.session_state.pop(f"{P}.flash", None):
    st.toast(flash)


def read_sweeps() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every sweep listed (archived ones only with "Show archived") and those the filters keep."""
    state = st.session_state
    every = source.sweeps(archived=None if state[f"{P}.archived"] else False)
    kept = filter_sweeps(
        every,
        text=state[f"{P}.find"],
        tags=state[f"{P}.tag"],
        owners=state[f"{P}.owner"],
        statuses=state[f"{P}.state"],
        archs=state[f"{P}.arch"],
        datasets=state[f"{P}.dataset"],
        since=state[f"{P}.since"],
        until=state[f"{P}.until"],
    )
    return every, kept


every, _ = read_sweeps()
r1 = st.columns([3, 2, 2, 2])
r1[0].text_input("Search", key=f"{P}.find", placeholder="name or sweep id")
r1[1].multiselect("Tags", _options(every["tags"].explode().dropna(), "tag"), key=f"{P}.tag", placeholder="any tag")
r1[2].multiselect("Owner", _options(every["owner"], "owner"), key=f"{P}.owner", placeholder="anyone")
r1[3].multiselect("Sweep status", SWEEP_STATUSES, key=f"{P}.state", placeholder="any status")
r2 = st.columns(5, vertical_alignment="bottom")
r2[0].multiselect("Architecture", _options(every["arch"], "arch"), key=f"{P}.arch", placeholder="any")
r2[1].multiselect("Dataset", _options(every["dataset"], "dataset"), key=f"{P}.dataset", placeholder="any")
r2[2].date_input("Created from", key=f"{P}.since", format="YYYY-MM-DD")
r2[3].date_input("Created until", key=f"{P}.until", format="YYYY-MM-DD")
r2[4].toggle("Show archived", key=f"{P}.archived", help="Archived sweeps are hidden from every list until restored")


@st.fragment(run_every=3.0)
def sweeps_table() -> None:
    every, sweeps = read_sweeps()
    if every.empty:
        st.info("No sweeps yet: launch one on the Launch page.")
        return
    st.caption(f"{len(sweeps):,} of {len(every):,} sweeps")
    if sweeps.empty:
        st.info("No sweep matches these filters.")
        return
    sweeps = sweeps.assign(runs=[runs_text(r) for _, r in sweeps.iterrows()])
    st.dataframe(
        sweeps,
        hide_index=True,
        width="stretch",
        column_order=sweep_columns(sweeps),
        column_config={
            **narrow(sweeps),
            "tags": st.column_config.ListColumn("tags", width="small"),
            "runs": st.column_config.TextColumn("runs", width="medium", help="runs by status"),
            "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, width="small"),
            "created": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm"),
            "archived": st.column_config.DatetimeColumn("archived", format="YYYY-MM-DD HH:mm"),
        },
    )


sweeps_table()
_, sweeps = read_sweeps()
if sweeps.empty:
    sync_url(SCHEMA, P, extra={b: (st.session_state[f"{P}.{b}"] or "") for b in ("since", "until")})
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
    placeholder="e.g. started, duration_s, worker",
    help="The runs table shows the columns that fit; the CSV has them all",
)
sync_url(SCHEMA, P, extra={b: (st.session_state[f"{P}.{b}"] or "") for b in ("since", "until")})

sweep: dict[str, Any] = source.sweep(sweep_id) or {"id": sweep_id}
read_only = read_only_notice(res, "cancelling, rerunning, adding seeds and editing sweeps")
off = read_only_help(res)  # the reason, as the disabled buttons' tooltip


def refusal(action: str) -> str | None:
    """Why this user cannot take `action` on the sweep (a read-only data folder first), else None."""
    return off or why_not(actor, sweep, action)


def act(done: str, *steps: Callable[[], Any]) -> None:
    """Run tasks.api calls in order; say `done` when all succeeded, else the one-line reason of the
    first refusal (not allowed, bad input, a GPU local workers lack: nothing of it is changed)."""
    from engine.config import ConfigError
    from tasks.access import NotAllowed

    try:
        for step in steps:
            step()
    except (ConfigError, NotAllowed, ValueError) as exc:
        st.error(str(exc))
        return
    _flash(done)


no_cancel = refusal("cancel")
a1, a2, a3, a4, a5 = st.columns(5)
if a1.button("Cancel sweep", key=f"{P}.cancel", disabled=no_cancel is not None, help=no_cancel):
    from tasks.access import NotAllowed
    from tasks.api import cancel, shared_active_runs

    shared = shared_active_runs(settings, sweep_id)  # before: afterwards they are no longer active
    try:
        cancel(settings, sweep_id, actor=actor)
        st.toast(f"Cancel requested for {sweep_id}")
    except NotAllowed as exc:
        st.error(str(exc))
        shared = {}
    if shared:  # a run belongs to every sweep that launched its cell: it stops for all of them
        others = ", ".join(f"{k} run(s) of sweep {sid}" for sid, k in sorted(shared.items()))
        st.warning(f"These runs are shared with other sweeps, so this also stopped {others}.")
if a2.button(
    "Rerun unfinished", key=f"{P}.rerun", disabled=read_only, help=off or "Runs that failed, were cancelled or lost"
):
    from tasks.api import rerun

    # no device: tasks.api reruns on the sweep's launch device (a GPU sweep goes back to the gpu queue)
    # e.g. a GPU sweep and no GPU for local workers: refused, nothing reset
    act(f"Rerun queued for {sweep_id}", lambda: rerun(settings, sweep_id, actor=actor))
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
        from tasks.api import add_seeds

        # on the sweep's launch device, as a rerun; a bad seed, too many cells, a GPU local workers lack: refused
        act(f"Added seeds {seeds}", lambda: add_seeds(settings, sweep_id, seeds, actor=actor))
if a5.button("Clone and edit", key=f"{P}.clone"):
    st.session_state["launch.clone"] = dict(sweep.get("spec", {}))
    st.switch_page("views/launch.py")
# Said on the page too, not only in the tooltips. Always a slot here, filled or not: an element that
# comes and goes shifts those below, and Streamlit then redraws the Details expander closed.
lock_note = st.container()
if (not_yours := why_not(actor, sweep, "cancel")) is not None:
    lock_note.caption(f":material/lock: {not_yours}")


@st.dialog("Purge sweep", width="large")
def purge_dialog() -> None:
    """Name what goes before anything does: the runs deleted, those kept because another sweep
    shares them, the points; then ask for the sweep id typed out."""
    from tasks.api import purge, purge_plan

    plan = purge_plan(settings, sweep_id)
    points = "their metric points" if plan.points is None else f"their **{plan.points:,} metric points**"
    st.markdown(
        f"Purging **{plan.name}** (`{plan.sweep_id}`) deletes the sweep, **{len(plan.runs_deleted):,} run(s)** "
        f"and {points}. This cannot be undone."
    )
    if plan.runs_kept:
        holders = sorted({other for ids in plan.runs_kept.values() for other in ids})
        st.markdown(
            f"**{len(plan.runs_kept):,} run(s) are kept**, with their points: other sweeps hold them too "
            f"({', '.join(holders)})."
        )
    typed = st.text_input(f"Type the sweep id ({plan.sweep_id}) to confirm", key=f"{P}.purge.confirm")
    if st.button("Purge", type="primary", key=f"{P}.purge.go", icon=":material/delete_forever:"):
        if typed.strip() != plan.sweep_id:
            st.error(f"confirm: type the sweep id {plan.sweep_id} exactly (got {typed.strip()!r})")
            return
        act(f"Purged sweep {plan.sweep_id}", lambda: purge(settings, sweep_id, confirm=plan.sweep_id, actor=actor))


with st.expander("Details", icon=":material/info:"):
    no_edit = refusal("rename")
    with st.form(f"{P}.details"):
        d1, d2 = st.columns([2, 3])
        new_name = d1.text_input("Name", value=str(sweep.get("name", "")), disabled=no_edit is not None)
        new_tags = d2.text_input(
            "Tags", value=", ".join(sweep.get("tags") or []), disabled=no_edit is not None, help="Comma-separated"
        )
        new_notes = st.text_area("Notes", value=str(sweep.get("notes") or ""), height=90, disabled=no_edit is not None)
        save = st.form_submit_button("Save", disabled=no_edit is not None, help=no_edit)
    row = sweeps.loc[sweeps["sweep_id"] == sweep_id].iloc[0]
    archived = sweep.get("archived") is not None
    times = [f"{c} {when_text(row[c])}" for c in ("created", "started", "finished", *(["archived"] * archived))]
    times.append(f"duration {duration_text(row['duration_s'])}")
    st.markdown(f"Owner **{sweep.get('owner', '—')}** · {' · '.join(times)}")
    e1, e2, _ = st.columns([1, 1, 3])
    no_archive = refusal("restore" if archived else "archive")
    if e1.button(
        "Restore" if archived else "Archive",
        key=f"{P}.archive",
        icon=":material/unarchive:" if archived else ":material/archive:",
        disabled=no_archive is not None,
        help=no_archive or ("Show it in lists again" if archived else "Hide it from lists (restorable)"),
    ):
        from tasks.api import archive, restore

        if archived:
            act(f"Restored {sweep_id}", lambda: restore(settings, sweep_id, actor=actor))
        else:
            act(f"Archived {sweep_id}: hidden until restored", lambda: archive(settings, sweep_id, actor=actor))
    no_purge = refusal("purge")
    if e2.button(
        "Purge…",
        key=f"{P}.purge",
        icon=":material/delete:",
        disabled=no_purge is not None,
        help=no_purge or "Delete this sweep's runs and points (asks first)",
    ):
        purge_dialog()
    if save:
        from tasks.api import rename, set_notes, set_tags

        name, tags = new_name.strip(), [t.strip() for t in new_tags.split(",") if t.strip()]
        steps = []
        if name != sweep.get("name"):
            steps.append(lambda: rename(settings, sweep_id, name, actor=actor))
        if tags != list(sweep.get("tags") or []):
            steps.append(lambda: set_tags(settings, sweep_id, tags, actor=actor))
        if new_notes != (sweep.get("notes") or ""):
            steps.append(lambda: set_notes(settings, sweep_id, new_notes, actor=actor))
        act(f"Saved the details of {sweep_id}" if steps else "Nothing changed", *steps)

with st.expander("Spec (TOML)", icon=":material/description:"):
    st.caption("What this sweep was launched with, read-only: copy it (the button at the code's corner) into a file "
               "for `gamma-lab sweep FILE`, or use Clone and edit above.")
    st.code(spec_text(sweep.get("spec") or {}), language="toml")

with st.expander("History", icon=":material/history:"):
    from storage.audit import trail

    events = pd.DataFrame(trail(source.registry, target=sweep_id), columns=["at", "actor", "action", "detail"])
    if events.empty:
        st.caption("Nothing recorded for this sweep yet.")
    else:
        events["at"] = pd.to_datetime(events["at"], unit="s")
        st.dataframe(
            events,
            hide_index=True,
            width="stretch",
            column_config={"at": st.column_config.DatetimeColumn("when", format="YYYY-MM-DD HH:mm:ss")},
        )


total_steps = int(sweep.get("spec", {}).get("train", {}).get("steps", 0)) or None


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
    eta = eta_seconds(runs, total_steps, time.time())
    left = f" · about {duration_text(eta)} left at the pace so far" if eta else ""
    st.caption(progress_line(runs, total_steps) + left)
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
                width="small",
                help=f"steps done of {total_steps:,}" if total_steps else None,
            ),
            "status": st.column_config.TextColumn("status", width="small"),
            # a traceback or a note is long: cut in the table, whole under Failed runs and in the CSV
            "error": st.column_config.TextColumn("error", width="small"),
            "newer": st.column_config.TextColumn("newer", width="medium"),
            # a diverged run's loss reaches 1e12: 4 significant digits keep the column narrow
            **{c: st.column_config.NumberColumn(c, format="%.4g", width="small") for c in LOSS_COLUMNS},
            "started": st.column_config.DatetimeColumn("started", format="YYYY-MM-DD HH:mm:ss"),
            "ended": st.column_config.DatetimeColumn("ended", format="YYYY-MM-DD HH:mm:ss"),
            "duration_s": st.column_config.NumberColumn("duration", format="%.1f s", width="small",
                                                        help="of the attempt shown"),
        },
    )
    st.download_button(
        "Download runs (CSV)", csv_bytes(shown), file_name=f"runs-{sweep_id}.csv", mime="text/csv", key=f"{P}.csv"
    )


runs_table()


def failed_runs() -> None:
    """Why runs failed: the error each one ended with (the traceback its worker sent) and, for local
    workers, the end of their log (a Celery worker's log stays on its machine)."""
    runs = source.runs(sweep_id)
    bad = runs[runs["status"].isin(("failed", "lost")) & runs["error"].astype(bool)]
    if bad.empty:
        return
    with st.expander(f"Failed runs ({len(bad)})", icon=":material/error:"):
        labels = {r.run_id: f"{r.run_id} · γ={r.gamma:.3g} η={r.eta:.3g} seed={r.seed} ({r.status})"
                  for r in bad.itertuples()}
        run_id = st.selectbox("Run", list(labels), key=f"{P}.failed", format_func=labeler(labels))
        st.code(str(bad.loc[bad["run_id"] == run_id, "error"].iloc[0]), language=None)
        log_path = settings.data_dir / "queue" / "workers.log"
        if sweep.get("executor") == "local" and log_path.is_file():
            st.caption(f"The local workers' log, last lines ({log_path}):")
            st.code(log_tail(log_path), language=None)


def log_tail(path: Any, lines: int = 40, max_bytes: int = 64 * 1024) -> str:
    """The last `lines` lines of a log file, reading at most its last `max_bytes`."""
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - max_bytes))
        text = fh.read().decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


failed_runs()
st.page_link(
    "views/portrait.py",
    label="Phase portrait of this sweep",
    icon=":material/grid_on:",
    query_params={"sweep": sweep_id},
)
