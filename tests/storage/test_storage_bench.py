import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_quick_runs_and_prints_ratios() -> None:
    out = subprocess.run([sys.executable, str(REPO / "bench" / "storage.py"), "--quick"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for label in ("ingest", "heatmap", "trajectory"):
        line = next(ln for ln in out.stdout.splitlines() if ln.startswith(label))
        assert "ratio" in line and "x" in line.split("ratio")[1]
