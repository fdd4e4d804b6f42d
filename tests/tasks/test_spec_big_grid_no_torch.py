"""A grid over the cell limit is refused before torch is imported: on a busy machine the import alone
took seconds, and the refusal must be immediate (issue 9 item 6)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHECK = """
import sys
from storage.settings import load_settings
from tasks.spec import SpecError, SweepSpec, validate_spec
spec = SweepSpec.from_dict({"grid": {"gamma": {"from": 1e-4, "to": 1e4, "per_decade": 1000},
                                     "eta": {"from": 1e-4, "to": 1e4, "per_decade": 1000}, "seeds": 10000}})
try:
    validate_spec(spec, load_settings())
except SpecError as exc:
    print(exc.lines()[0])
print("torch imported" if "torch" in sys.modules else "torch not imported")
"""


def test_a_huge_grid_is_refused_at_grid_without_importing_torch(tmp_path: Path):
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120,
                          env={"GAMMA_LAB_DATA": str(tmp_path), "PATH": "/usr/bin:/bin"},
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    first, verdict = done.stdout.strip().splitlines()
    assert first.startswith("grid:") and "max_cells" in first
    assert verdict == "torch not imported"
