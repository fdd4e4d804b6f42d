"""bench/diagnostics_cost.py and bench/sharpness.py --quick run and print what they promise: each
costly metric's measured share of training beside the cost model's, and the sharpness's methods with
their float64 errors. Only the output's shape is checked: no timed assertion (speed claims are the
benchmarks' printed ratios)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *more: str) -> list[str]:
    done = subprocess.run([sys.executable, script, "--quick", "--threads", "1", *more], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


@pytest.mark.slow
def test_diagnostics_cost_benchmark_prints_measured_and_model_shares():
    lines = _run("bench/diagnostics_cost.py")
    result = json.loads(next(line for line in lines if line.startswith("RESULT "))[len("RESULT ") :])
    for grid in ("twins", "distinct"):
        for arm in ("test", "alignment", "sharpness", "movement", "defaults"):
            assert math.isfinite(result[f"{grid}_{arm}_measured"]), (grid, arm)
            assert result[f"{grid}_{arm}_model"] >= 0, (grid, arm)
        assert result[f"{grid}_defaults_model"] > 0  # the four together cost something by the model
    assert any(line.startswith("grid:") and "evals at steps [0," in line for line in lines)


@pytest.mark.slow
def test_diagnostics_cost_benchmark_prints_the_model_across_mlp_sizes():
    lines = _run("bench/diagnostics_cost.py", "--sizes")
    result = json.loads(next(line for line in lines if line.startswith("RESULT "))[len("RESULT ") :])
    assert len(result) == 4  # bench/diagnostics_cost.QUICK_SIZES: measured and model for each
    for key, value in result.items():
        assert math.isfinite(value) and (value > 0 if key.endswith("_model") else True), key
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("width"))
    rows = [line.split() for line in lines[header + 1 : header + 3]]
    assert [(int(r[0]), int(r[1])) for r in rows] == [(16, 16), (64, 64)] and all(int(r[3]) >= 3 for r in rows)


@pytest.mark.slow
def test_sharpness_benchmark_prints_times_products_and_errors():
    lines = _run("bench/sharpness.py")
    round_line = next(line for line in lines if line.startswith("round 1:"))
    for arm in ("former", "autograd", "trainer"):
        assert f"{arm} " in round_line and "products" in round_line
    errors = [line for line in lines if line.startswith("float64,")]
    assert len(errors) == 2 and "trainer relative error" in errors[1]
    # the trainer's sharpness is within its tolerance of the converged reference on the quick grid
    assert float(errors[1].split("max ")[1].split(",")[0]) < 1e-3
