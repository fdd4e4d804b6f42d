"""Runs page while a sweep runs: each running run shows how far it got (the metric store's last
logged step against the sweep's steps), the numbers move as points arrive, and the page asks the
store once per render, not once per run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from app.logic.source import progress_line, with_progress
from storage.recorder import Recorder

from .live_sweep import three_runs

MAIN = str(Path(__file__).resolve().parents[2] / "app" / "main.py")
STEPS = 1000


def _runs_frame(at: AppTest) -> pd.DataFrame:
    frames = [d.value for d in at.dataframe if "run_id" in d.value.columns]
    assert len(frames) == 1
    return frames[0].set_index("run_id")


def test_running_runs_show_their_progress_and_it_moves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, reg, sweep_id, (running, other, queued), pub = three_runs(tmp_path, STEPS)
    steps = np.arange(STEPS)
    pub.started(running, 0, "w")
    pub.points(running, 0, steps[:250], ["train_loss"] * 250, np.ones(250))
    pub.started(other, 0, "w")
    pub.points(other, 0, steps[:40], ["train_loss"] * 40, np.ones(40))
    calls: list[list[str]] = []
    import storage.progress

    real = storage.progress.last_steps

    def counted(source, run_ids, metric="train_loss"):  # type: ignore[no-untyped-def]
        calls.append(sorted(run_ids))
        return real(source, run_ids, metric)

    monkeypatch.setattr(storage.progress, "last_steps", counted)
    monkeypatch.setenv("GAMMA_LAB_DATA", str(settings.data_dir))
    # This test's recorder owns the store (the dashboard in this process reads through it), so
    # points arrive exactly when the test drains them.
    with Recorder(settings) as rec:
        rec.drain()
        at = AppTest.from_file(MAIN, default_timeout=60)
        at.switch_page("views/runs.py").run()
        assert not at.exception, at.exception
        runs = _runs_frame(at)
        assert runs.loc[running, "status"] == "running" and runs.loc[running, "steps_done"] == 250
        assert runs.loc[running, "progress"] == pytest.approx(0.25)
        assert runs.loc[other, "steps_done"] == 40 and runs.loc[other, "progress"] == pytest.approx(0.04)
        assert pd.isna(runs.loc[queued, "steps_done"]) and pd.isna(runs.loc[queued, "progress"])
        assert calls == [sorted([running, other])]  # one store query for every running run
        assert any(c.value.startswith("queued: 1 · running: 2 (290 of 2,000 steps)") for c in at.caption)

        pub.points(running, 0, steps[250:600], ["train_loss"] * 350, np.ones(350))
        pub.finished(other, 0, "done", steps_done=STEPS)
        rec.drain()
        at.run()
        assert not at.exception, at.exception
        runs = _runs_frame(at)
        assert runs.loc[running, "steps_done"] == 600 and runs.loc[running, "progress"] == pytest.approx(0.6)
        assert runs.loc[other, "status"] == "done" and runs.loc[other, "progress"] == pytest.approx(1.0)
        assert calls[-1] == [running]
        assert any(c.value.startswith("queued: 1 · running: 1 (600 of 1,000 steps) · done: 1") for c in at.caption)
    pub.close()


def test_progress_of_finished_runs_comes_from_the_registry() -> None:
    runs = pd.DataFrame(
        {
            "run_id": ["a", "b", "c"],
            "status": ["done", "diverged", "lost"],
            "steps_done": [100, 7, None],
            "gamma": [1.0, 1.0, 1.0],
        }
    )
    last = pd.DataFrame({"run_id": ["a", "c"], "last_step": [3, 49]})  # a's stale last step is not used
    out = with_progress(runs, last, 100).set_index("run_id")
    assert out["steps_done"].tolist() == [100, 7, 50]
    np.testing.assert_allclose(out["progress"], [1.0, 0.07, 0.5])
    assert list(out.columns).index("progress") == list(out.columns).index("steps_done") + 1
    assert progress_line(out.reset_index(), 100) == "done: 1 · diverged: 1 · lost: 1"
    assert with_progress(runs, None, None)["progress"].isna().all()  # no spec steps: progress unknown
