"""bench/dashboard.py --quick runs end to end: both stores seeded, every page rendered cold and warm, a table
printed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_dashboard_bench_quick_prints_a_row_per_page():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "dashboard.py"), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].split()[0] == "page"
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in lines[1:]}  # cold, warm × 2, ratios
    assert set(rows) == {"launch", "runs", "portrait", "trajectories", "overlays", "diagnostics", "compare"}
    assert all(len(v) == 6 and all(x > 0 for x in v) for v in rows.values())
