"""The dashboard takes recording over once the process that recorded when it started has stopped."""

from __future__ import annotations

from pathlib import Path

from app.ui import Resources
from storage.recorder import Recorder
from storage.settings import load_settings


def test_dashboard_takes_recording_over_when_the_other_recorder_stops(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data")
    other = Recorder(settings).start()  # e.g. a `gamma-lab sweep --wait` that started first
    res = Resources(settings=settings, source=None, recorder=None, recorder_note="another process records")
    try:
        assert not res.take_over_if_free(every_s=0.0)
        assert res.recorder is None
        other.stop()
        assert res.take_over_if_free(every_s=0.0)
        assert res.recorder is not None and res.recorder_note == "recording in this dashboard"
    finally:
        other.stop()
        if res.recorder is not None:
            res.recorder.stop()


def test_take_over_attempts_are_throttled(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data")
    other = Recorder(settings).start()
    res = Resources(settings=settings, source=None, recorder=None, recorder_note="another process records")
    try:
        assert not res.take_over_if_free(every_s=3600.0)
        other.stop()
        assert not res.take_over_if_free(every_s=3600.0)  # next attempt not due yet
    finally:
        other.stop()
