"""Readers in the recorder's process while it ingests: failing and succeeding queries on one thread.

Reported: a dashboard page failed with `ResourceInUseException: connection has an unfinished result`
from `cur.unregister` under heatmap while the recorder ingested. Two causes, both reproduced here:
the per-thread reader cursor was cached forever, so a query left half-fetched (an interrupted fetch,
a `fetchone()` of a multi-row result) poisoned every later query of that thread; and the unregister in
`finally` raised over the query's own error.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from storage import queries
from storage.metric_store import MetricStore, PointsBatch
from storage.queries import QuerySource
from storage.registry import NewRun, Registry
from storage.settings import Settings


class Interrupted(Exception):
    """Stands for an exception raised mid-fetch (Streamlit stops a script thread this way on rerun)."""


def _runs(n: int) -> list[NewRun]:
    return [NewRun(f"race{i:04d}", {"model": {"depth": 3, "width": 8}}, "s", 0.1 * (1 + i % 4), 0.01 * (1 + i // 4),
                   0) for i in range(n)]


def test_reader_thread_survives_failed_queries_during_ingest(settings: Settings, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    registry = Registry(settings.registry_url)
    sid = registry.create_sweep("race", "t", {})
    grid = _runs(16)
    registry.add_runs(sid, grid)
    for r in grid:
        registry.finish(r.run_id, 0, "done", steps_done=100)
    store = MetricStore(settings.metrics_path)
    source = QuerySource(store, registry)
    steps = np.arange(100, dtype=np.int64)
    store.ingest([PointsBatch(r.run_id, 0, 0, steps, ["train_loss"] * 100, np.exp(-steps / 50.0)) for r in grid])

    real_frame = queries._frame
    fail_next = threading.local()

    def flaky_frame(cur, sql, params=None):  # type: ignore[no-untyped-def]
        """Every other query: start fetching, then fail partway, leaving the result unfinished."""
        if getattr(fail_next, "on", False):
            result = cur.execute(sql, params)
            result.fetchone()
            raise Interrupted("stopped mid-fetch")
        return real_frame(cur, sql, params)

    monkeypatch.setattr(queries, "_frame", flaky_frame)

    stop = threading.Event()
    writer_errors: list[BaseException] = []

    def writer() -> None:
        seq = 1
        try:
            while not stop.is_set():
                more = np.arange(seq * 100, (seq + 1) * 100, dtype=np.int64)
                store.ingest([PointsBatch(r.run_id, 0, seq, more, ["train_loss"] * 100, np.exp(-more / 50.0))
                              for r in grid])
                seq += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            writer_errors.append(exc)

    reader_errors: list[str] = []
    ok = {"heatmap": 0, "trajectories": 0, "count": 0}

    def reader() -> None:
        ids = [r.run_id for r in grid[:4]]
        for i in range(60):
            fail_next.on = i % 2 == 1
            try:
                if i % 4 < 2:
                    out = queries.heatmap(source, sid)
                    assert len(out) == 16 and (out["cell_status"] == "ok").all()
                    ok["heatmap"] += 1
                else:
                    out = queries.trajectories(source, ids, max_points=40)
                    assert set(out["run_id"]) == set(ids)
                    ok["trajectories"] += 1
                if fail_next.on:
                    reader_errors.append(f"query {i} should have raised Interrupted")
            except Interrupted:
                if not fail_next.on:
                    reader_errors.append(f"query {i}: Interrupted without a failure injected")
            except Exception as exc:  # noqa: BLE001 - anything else masks the real error or is the bug
                reader_errors.append(f"query {i}: {type(exc).__name__}: {exc}")
            # a half-read raw cursor (what app code does with store.cursor()) must not poison later reads
            store.cursor().execute("SELECT step FROM points").fetchone()
            assert store.count_points() >= 1600
            ok["count"] += 1

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    threads[0].start()
    threads[1].start()
    threads[1].join(120)
    stop.set()
    threads[0].join(60)
    store.close()
    registry.close()
    assert not writer_errors, writer_errors
    assert not reader_errors, reader_errors[:5]
    assert ok["heatmap"] == 15 and ok["trajectories"] == 15 and ok["count"] == 60
