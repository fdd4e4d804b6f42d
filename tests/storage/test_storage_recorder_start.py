"""A recorder starting while a short-lived reader (`gamma-lab status`/`export` in another process)
has the DuckDB file open waits for it instead of giving up recording for good."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from storage.metric_store import MetricStore
from storage.recorder import Recorder
from storage.settings import Settings

REPO = Path(__file__).resolve().parents[2]
HOLD = """
import sys, time
from pathlib import Path
from storage.metric_store import MetricStore
store = MetricStore(Path(sys.argv[1]), read_only=True)
print("open", flush=True)
time.sleep(float(sys.argv[2]))
store.close()
"""


def test_recorder_waits_for_a_short_lived_reader(settings: Settings) -> None:
    settings.ensure_dirs()
    MetricStore(settings.metrics_path).close()  # the file exists, as after any earlier session
    reader = subprocess.Popen([sys.executable, "-c", HOLD, str(settings.metrics_path), "1.5"], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout is not None and reader.stdout.readline().strip() == "open"
        started = time.monotonic()
        recorder = Recorder(settings, lock_wait_s=30)  # would have raised RecorderBusy at once before
        try:
            assert time.monotonic() - started > 0.5  # it did wait for the reader
        finally:
            recorder.close()
    finally:
        reader.wait(30)
