"""A sweep on a procedural dataset (teacher, MNIST-1D) is checked without importing torch: nothing is
read from the data folder for it, and the import cost `gamma-lab sweep --wait` seconds before its
worker was even started (issue 13 item 5, bench/end_to_end.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import DataConfig
from engine.data import check_data
from tasks.spec import PROCEDURAL_DATASETS

CHECK = """
import sys
from storage.settings import load_settings
from tasks.spec import SweepSpec, validate_spec
spec = SweepSpec.from_dict({"data": {"dataset": sys.argv[1]}, "grid": {"gamma": [1.0], "eta": [0.01], "seeds": 1}})
print(validate_spec(spec, load_settings()))
print("torch imported" if "torch" in sys.modules else "torch not imported")
"""


@pytest.mark.parametrize("dataset", sorted(PROCEDURAL_DATASETS))
def test_a_procedural_dataset_is_checked_without_importing_torch(tmp_path: Path, dataset: str):
    done = subprocess.run([sys.executable, "-c", CHECK, dataset], capture_output=True, text=True, timeout=120,
                          env={"GAMMA_LAB_DATA": str(tmp_path), "PATH": "/usr/bin:/bin"},
                          cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines() == ["[]", "torch not imported"]


@pytest.mark.parametrize("dataset", sorted(PROCEDURAL_DATASETS))
def test_the_engine_has_nothing_to_check_for_a_procedural_dataset(tmp_path: Path, dataset: str):
    assert check_data(DataConfig(dataset=dataset), data_root=tmp_path, batch_size=128, steps=10**9) == []
