"""`sweep --wait`'s progress bar (app.cli_wait.steps_progress) counts each running run's last logged
step. Its own recorder keeps those steps as it stores points (Recorder.last_steps), so the bar reads
them without querying the store twice a second beside the training; it falls back to the query for a
run whose current attempt the recorder has not stored points of (one it did not record from the
start, a new attempt)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import storage.progress
from app.cli_wait import LiveSteps, steps_progress
from storage.recorder import Recorder

from .live_sweep import three_runs

STEPS = 100


def test_progress_reads_the_recorders_steps_and_queries_only_what_it_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, reg, sweep_id, (a, b, _queued), pub = three_runs(tmp_path, STEPS)
    steps = np.arange(STEPS)
    queries: list[list[str]] = []
    real = storage.progress.last_step_of

    def counted(source, run_ids, metric="train_loss"):  # type: ignore[no-untyped-def]
        queries.append(sorted(run_ids))
        return real(source, run_ids, metric)

    monkeypatch.setattr(storage.progress, "last_step_of", counted)
    # b started under another recorder (a dashboard's, say) before this one
    pub.started(b, 0, "w")
    pub.points(b, 0, steps[:12], ["train_loss"] * 12, np.ones(12))
    with Recorder(settings) as before:
        before.drain()
    with Recorder(settings) as rec:
        live = LiveSteps(rec)
        pub.started(a, 0, "w")
        pub.points(a, 0, steps[:30], ["train_loss"] * 30, np.ones(30))
        pub.points(a, 0, [31], ["test_loss"], [1.0])  # another metric's step: train_loss is every step's
        rec.drain()
        assert rec.last_steps == {(a, 0): 29} and (a, 0) in rec.seen_started and (b, 0) not in rec.seen_started
        counts, done, total = steps_progress(settings, sweep_id, rec.store, reg, live)
        assert counts["running"] == 2 and counts["queued"] == 1 and total == 3 * STEPS and done == 30 + 12
        assert queries == [[b]]  # only the attempt it did not see start, once

        pub.points(b, 0, steps[12:20], ["train_loss"] * 8, np.ones(8))
        pub.points(a, 0, steps[30:55], ["train_loss"] * 25, np.ones(25))
        rec.drain()
        queries.clear()
        counts, done, _ = steps_progress(settings, sweep_id, rec.store, reg, live)
        assert done == 55 + 20 and queries == []  # no query twice a second
        assert steps_progress(settings, sweep_id, rec.store, reg)[1] == done and len(queries) == 1  # as the store says

        pub.points(a, 0, steps[55:], ["train_loss"] * 45, np.ones(45))
        pub.finished(a, 0, "done", steps_done=STEPS)
        rec.drain()
        queries.clear()
        counts, done, _ = steps_progress(settings, sweep_id, rec.store, reg, live)
        assert counts["done"] == 1 and done == STEPS + 20 and queries == []
    reg.close()
