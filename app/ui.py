"""Streamlit glue shared by the pages: resources, URL-backed widget state, charts with CSV download.

Kept small on purpose: anything worth testing without a browser lives in app/logic/.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app.logic.source import DashboardSource
from app.logic.view_state import Field, read_view, write_view

log = logging.getLogger("gamma_lab.app")


@dataclass
class Resources:
    settings: Any
    source: DashboardSource
    recorder: Any  # storage.recorder.Recorder, or None when another process records
    recorder_note: str
    last_takeover: float = -math.inf  # monotonic time of the last attempt to take recording over
    lock: threading.Lock = field(default_factory=threading.Lock)
    handover: threading.Thread | None = None  # waits for a recorder asked to hand over
    closed: bool = False  # shut down: never start recording again
    supervisor: Any = None  # tasks.local_queue.Supervisor: replaces killed local workers, requeues their units
    read_only: str | None = None  # why the data folder cannot be written (Settings.read_only_reason), else None

    def take_over_if_free(self, every_s: float = 10.0) -> bool:
        """Record here when no other process does any more — otherwise sweeps launched from this
        dashboard would wait for a recorder forever. A `gamma-lab sweep --wait` or a standalone
        recorder that records now is asked to hand over (storage.recorder.request_handover), and a
        short thread takes over as soon as it has; another dashboard is never asked (the two would
        ping-pong). Cheap (a non-blocking file lock), throttled."""
        if self.recorder is not None:
            return True
        if self.read_only is not None:  # nothing can be recorded here, nor asked of anyone
            return False
        with self.lock:
            now = time.monotonic()
            # each caller throttles on its own period: the store-held fragment (every few seconds)
            # must not wait out the 10 s a page render set (a second dashboard took 12-14 s)
            if self.recorder is not None or now - self.last_takeover < every_s:
                return self.recorder is not None
            self.last_takeover = now
            if self._try_take_over():
                return True
            from storage.recorder import pid_alive, read_owner, request_handover

            owner = read_owner(self.settings)
            asking = self.handover is not None and self.handover.is_alive()
            if owner.role in ("cli", "recorder") and owner.pid is not None and pid_alive(owner.pid) and not asking:
                request_handover(self.settings)
                log.info("asked %s to hand recording over", owner.describe())
                self.handover = threading.Thread(target=self._await_handover, name="gamma-lab-handover", daemon=True)
                self.handover.start()
            return False

    def _try_take_over(self) -> bool:
        """One non-blocking attempt; the caller holds self.lock."""
        from storage.recorder import Recorder, RecorderBusy

        if self.closed:
            return False
        try:
            recorder = Recorder(self.settings, lock_wait_s=0.0, role="dashboard")
        except RecorderBusy:
            return False
        except Exception as exc:  # noqa: BLE001 - e.g. the broker is down: the pages still read the registry
            note = not_recording_note(exc)
            if note != self.recorder_note:  # once per distinct problem, not at every page run
                log.warning("cannot record in this dashboard now (%s); retrying every %.0f s", note, 10.0)
            self.recorder_note = note
            return False
        self.recorder, self.recorder_note = recorder.start(), "recording in this dashboard"
        log.info("recorder started: the other recorder has stopped or handed over")
        return True

    def _await_handover(self, poll_s: float = 0.2) -> None:
        """Take over as soon as the asked recorder has yielded (it finishes its step first)."""
        from storage.recorder import HANDOVER_FRESH_S

        deadline = time.monotonic() + HANDOVER_FRESH_S
        while time.monotonic() < deadline:
            time.sleep(poll_s)
            with self.lock:
                try:
                    if self.closed or self.recorder is not None or self._try_take_over():
                        return
                except Exception as exc:  # noqa: BLE001 - e.g. the broker went down: the pages say so
                    log.warning("cannot take recording over: %s", exc)
                    return


def not_recording_note(exc: Exception) -> str:
    """The sidebar's word on why this dashboard does not record: another process does (RecorderBusy),
    or something else stops it (the broker is down: the registry still answers the pages)."""
    from storage.recorder import RecorderBusy

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, RecorderBusy):
        return f"another process records ({text}); this dashboard only reads"
    return f"not recording now ({type(exc).__name__}: {text}); retried every few seconds"


_LIVE: list[Resources] = []  # every Resources this process made (shutdown stops their recorders)


def shutdown() -> None:
    """Stop the recorder threads of this process's dashboards and forget the cached resources (the
    test suite calls it after each test: a recorder left running outlived the Redis it read from)."""
    while _LIVE:
        res = _LIVE.pop()
        with res.lock:
            res.closed = True  # a hand-over thread still waiting must not start one afterwards
            if res.recorder is not None:
                res.recorder.stop()
                res.recorder = None
            if res.supervisor is not None:
                res.supervisor.stop()
    _resources.clear()


@st.cache_resource(show_spinner=False)
def _resources(data_dir: str, registry_url: str) -> Resources:
    """Once per server and data folder: settings, the registry, and the recorder thread.

    DuckDB allows one read-write process per file, so exactly one recorder may own it. If another
    process (a `gamma-lab recorder`, a second dashboard) already does, this dashboard only reads
    and publishes: workers' events still reach that recorder through the bus."""
    from storage.settings import load_settings

    settings = load_settings()
    reason = settings.read_only_reason()
    if reason is not None:  # browse only: no recorder, nothing created; the pages read the files as they are
        res = Resources(
            settings=settings,
            source=DashboardSource(settings),
            recorder=None,
            recorder_note="read-only data folder: this dashboard only reads",
            read_only=reason,
        )
        _LIVE.append(res)
        return res
    settings.ensure_dirs()
    recorder, note = None, "recording in this dashboard"
    from storage.metric_store import StoreCorrupt
    from storage.registry import RegistryUnreadable

    try:
        from storage.recorder import Recorder

        recorder = Recorder(settings, role="dashboard")
        recorder.start()
    except (StoreCorrupt, RegistryUnreadable):
        # Not "another process records": the file itself is broken. Raised (so not cached) for
        # app/main.py to show; once the user moves the file aside, a reload starts afresh.
        raise
    except Exception as exc:  # noqa: BLE001 - another recorder, or the broker is down: read; retried per page
        recorder, note = None, not_recording_note(exc)
        log.warning("recorder not started: %s", exc)
    res = Resources(settings=settings, source=DashboardSource(settings), recorder=recorder, recorder_note=note)
    from tasks.local_queue import Supervisor

    res.supervisor = Supervisor(settings)  # the dashboard outlives sweeps: it keeps their local workers going
    res.supervisor.start()
    _warm_up_workers(settings)
    _LIVE.append(res)
    return res


def _warm_up_workers(settings: Any) -> None:
    """Under `gamma-lab serve` (which sets GAMMA_LAB_WARM_WORKERS): start the local workers now, in the
    background, so the first launch does not wait for them to start (tasks.local_queue.warm_up); they
    leave when this dashboard does."""
    import os

    from tasks.local_queue import WARM_ENV, warm_up

    try:
        idle_s = float(os.environ.get(WARM_ENV) or 0)
    except ValueError:
        idle_s = 0.0
    if settings.embedded and idle_s > 0:
        threading.Thread(target=warm_up, args=(settings, idle_s), name="gamma-lab-warm-up", daemon=True).start()
    # the Launch click validates the spec's data (engine.data imports torch): 1.3 s of a quick demo's
    # 5 s when paid then; import it now, in the background, while the user reads the form
    threading.Thread(target=_preimport, name="gamma-lab-preimport", daemon=True).start()


def _preimport() -> None:
    import importlib

    for name in ("engine.data", "tasks.planner", "tasks.api", "storage.queries"):
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - an import that fails here fails again, visibly, where it is used
            log.debug("pre-import of %s failed: %s", name, exc)


def read_only_notice(res: Resources, what: str) -> bool:
    """On a read-only data folder, say so once on the page, naming the folder, why, and that `what`
    (e.g. "launching") is off; True then (the caller disables its controls with `read_only_help`)."""
    if res.read_only is None:
        return False
    st.warning(
        f"**Read-only data folder.** {res.settings.data_dir} cannot be written ({res.read_only}), so {what} is off; "
        "every page still shows what it holds. To change anything, make it writable (or set GAMMA_LAB_DATA to a "
        "writable folder) and restart the dashboard.",
        icon=":material/lock:",
    )
    return True


def read_only_help(res: Resources) -> str | None:
    """The tooltip of a control disabled because the data folder is read-only (None when it is not)."""
    return None if res.read_only is None else f"Off: the data folder {res.settings.data_dir} is read-only"


def broken_store_errors() -> tuple[type[Exception], ...]:
    """The exceptions that mean an unreadable registry or metric file (shown, never a traceback)."""
    from storage.metric_store import StoreCorrupt
    from storage.registry import RegistryUnreadable

    return (StoreCorrupt, RegistryUnreadable)


def show_broken_store(exc: Exception) -> None:
    st.error(f"**The lab's data cannot be read.** {exc}", icon=":material/error:")
    st.caption("Nothing was changed or reset. Fix or move the file named above, then reload this page.")


RETRY_S = 3.0  # how often a page that found the metric store held looks again


def show_store_held(res: Resources) -> None:
    """A page could not read the metric store because another process records (StoreLocked): say
    which, and look again every few seconds (a fragment timer, no busy loop); the whole page reruns
    as soon as this dashboard records itself."""
    from storage.recorder import read_owner

    owner = read_owner(res.settings)
    if owner.role == "dashboard":
        detail = (
            "Two dashboards on one data folder: this one shows results when the other one stops "
            "(open the other one instead)."
        )
    else:
        detail = "This page shows the results as soon as it can read them; it looks again every few seconds."
    st.info(
        f"**Another process records the lab's results:** {owner.describe()}. {detail}", icon=":material/hourglass_top:"
    )
    _retry_when_free()


@st.fragment(run_every=RETRY_S)
def _retry_when_free() -> None:
    # tries to take recording over on this fragment's own clock (the page-level throttle is 10 s,
    # which made a second dashboard take 12-14 s to show results after the first one stopped)
    res = resources(takeover_every_s=RETRY_S * 0.9)
    if res.recorder is not None:
        st.rerun()


def resources(takeover_every_s: float = 10.0) -> Resources:
    from storage.settings import load_settings

    settings = load_settings()  # cheap: environment + optional settings.toml
    res = _resources(str(settings.data_dir), settings.registry_url)
    res.take_over_if_free(every_s=takeover_every_s)  # cheap when it fails: a non-blocking flock
    return res


def url_state(schema: Mapping[str, Field], prefix: str) -> dict[str, Any]:
    """Seed each widget's session state from the URL once; return the typed URL values."""
    values = read_view(st.query_params.to_dict(), schema)
    for name, value in values.items():
        key = f"{prefix}.{name}"
        if key not in st.session_state:
            st.session_state[key] = value
    return values


def sync_url(schema: Mapping[str, Field], prefix: str, extra: Mapping[str, Any] | None = None) -> None:
    """Write the page's widget values back to the URL (defaults left out)."""
    values = {name: st.session_state.get(f"{prefix}.{name}") for name in schema}
    if extra:
        values.update(extra)
    wanted = write_view(values, schema)
    if wanted != st.query_params.to_dict():
        st.query_params.from_dict(wanted)


def chart(fig: go.Figure, data: pd.DataFrame, *, key: str, filename: str, select: bool = False) -> Any:
    """A plotly chart plus a CSV download of the data behind it. Returns the selection event."""
    event = st.plotly_chart(
        fig,
        key=key,
        on_select="rerun" if select else "ignore",
        selection_mode=("points",) if select else ("points", "box", "lasso"),
        width="stretch",
    )
    # Deferred: the CSV is built when the user clicks, not on every rerun (a 10,000-cell heatmap's CSV
    # costs more than its query). The frame is captured now, so the file matches the figure shown.
    st.download_button(
        f"Download data (CSV, {len(data):,} rows)",
        csv_bytes(data),
        file_name=filename,
        mime="text/csv",
        key=f"{key}.csv",
    )
    return event


def csv_bytes(frame: pd.DataFrame) -> Callable[[], bytes]:
    """A download_button data callable: the frame as CSV, encoded only when the button is clicked."""
    return lambda: frame.to_csv(index=False).encode()


def labeler(labels: Mapping[Any, str]) -> Callable[[Any], str]:
    """A selectbox format_func showing labels[key], or the key itself when it has no label."""
    return lambda key: labels.get(key, str(key))


def sweep_labels(sweeps: pd.DataFrame) -> dict[str, str]:
    """sweep id -> "name · owner · id" for the rows of source.sweeps(), newest first."""
    return {row.sweep_id: f"{row.name} · {row.owner} · {row.sweep_id}" for row in sweeps.itertuples()}


def loss_caption(source: DashboardSource, sweep_ids: Iterable[str], where: Any = st) -> None:
    """One caption saying how the shown losses are normalized and the factor to the paper's
    convention (tasks.spec.loss_conventions of the sweeps' stored specs); nothing when none reads."""
    from tasks.spec import loss_conventions

    text = loss_conventions((source.sweep(s) or {}).get("spec") or {} for s in dict.fromkeys(sweep_ids))
    if text:
        where.caption(f"Loss: {text}.")


def pick_sweep(source: DashboardSource, key: str, label: str = "Sweep", default_index: int = 0, where: Any = st) -> str:
    """Sweep selectbox (newest first) in `where` (the page or a column); the chosen id is in
    session_state[key], the `default_index`-th newest when nothing valid is chosen. Stops the page
    when there is no sweep yet, so callers always get an id."""
    sweeps = source.sweeps()
    if sweeps.empty:
        st.info("No sweeps yet: launch one on the Launch page.")
        st.stop()
    ids = sweeps["sweep_id"].tolist()
    labels = sweep_labels(sweeps)
    if st.session_state.get(key) not in labels:
        st.session_state[key] = ids[min(default_index, len(ids) - 1)]
    return str(where.selectbox(label, ids, key=key, format_func=labeler(labels)))
