"""bench/end_to_end.py --quick runs (the reference, the engine and two real `gamma-lab sweep --wait`
in fresh data folders) and prints what it promises. Only the output's shape is checked: no timed
assertion (speed claims are the benchmark's printed ratios)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_end_to_end_benchmark_prints_ratios_and_the_breakdown():
    done = subprocess.run([sys.executable, "bench/end_to_end.py", "--quick", "--threads", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    result = json.loads(next(line for line in lines if line.startswith("RESULT "))[len("RESULT ") :])
    for key in ("reference", "engine_none", "engine_defaults", "sweep_none", "sweep_defaults", "sweep_warm_none",
                "sweep_warm_defaults"):  # fmt: skip
        assert result[f"{key}_s"] > 0, key
    for key in ("engine_none", "engine_defaults", "sweep_none", "sweep_defaults"):
        assert math.isfinite(result[f"{key}_ratio"]) and result[f"{key}_ratio"] > 0, key
        assert result[f"{key}_cpu_ratio"] > 0, key
    for metrics in ("none", "defaults"):  # every phase of the breakdown came from the worker's log marks
        for phase in ("cli_to_worker", "worker_imports", "claim", "unit", "recording", "polling_exit"):
            assert f"{metrics}_{phase}_s" in result, (metrics, phase)
        assert result[f"{metrics}_unit_s"] > 0
    assert any(line.startswith("-- breakdown of sweep --wait, no costly metrics") for line in lines)
    assert "run statuses in the sweeps: done" in lines
