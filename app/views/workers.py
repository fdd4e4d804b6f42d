"""Workers: every worker (Celery workers registered in the broker, local worker processes) with its
host, device, queue, last heartbeat and the runs it trains now. Refreshes by itself, like the Runs
tables; the same listing as `gamma-lab status --workers` (tasks.workers)."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.ui import resources
from tasks.api import redact_url
from tasks.workers import WorkerRow, celery_workers, list_workers, run_label

res = resources()
st.title("Workers")
st.caption(
    "Celery workers register in the broker every few seconds (their heartbeat); a local worker's heartbeat "
    "is its runs'. A process that holds running runs without being registered is listed too."
)


def workers_frame(rows: list[WorkerRow]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "worker": r.name,
                "host": r.host,
                "device": r.device,
                "queue": r.queue,
                "pid": r.pid,
                "heartbeat (s ago)": None if r.heartbeat_age_s is None else round(r.heartbeat_age_s, 1),
                "state": r.state,
                "runs": "; ".join(run_label(run) for run in r.runs),
            }
            for r in rows
        ]
    )


@st.fragment(run_every=3.0)
def workers_table() -> None:
    settings = res.settings
    try:
        registered = celery_workers(settings)
    except (RedisConnectionError, RedisTimeoutError) as exc:  # Celery workers register there: none can be listed
        st.warning(f"Cannot reach the broker at {redact_url(settings.broker_url or '')} ({exc}): Celery workers "
                   "cannot be listed; local workers and running runs follow.", icon=":material/cloud_off:")
        registered = []
    rows = list_workers(settings, registered, registry=res.source.registry)
    if not rows:
        st.info("No worker is running. Embedded mode starts local workers when work is queued; in a lab, "
                "start one with `gamma-lab worker --queue gpu --device cuda:0`.")
        return
    busy = sum(bool(r.runs) for r in rows)
    st.caption(f"{len(rows)} worker(s), {busy} training, {sum(len(r.runs) for r in rows)} run(s) running")
    st.dataframe(workers_frame(rows), hide_index=True, width="stretch")


workers_table()
