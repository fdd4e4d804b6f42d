"""The metric store builds its Arrow columns from NumPy buffers (storage.metric_store.column, strings):
the same arrays pa.array gives, a NaN value stays a NaN (not NULL), and storing points never imports
pandas (0.2 s of CPU that `sweep --wait`'s recorder spent beside the training)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from storage.metric_store import column, strings


@pytest.mark.parametrize(
    ("values", "dtype", "arrow"),
    [([3, -1, 0], np.int32, pa.int32()), (np.arange(5, dtype=np.int64) * 10**12, np.int64, pa.int64()),
     ([0.5, float("nan"), -np.inf], np.float64, pa.float64()), ([], np.int32, pa.int32())],
)  # fmt: skip
def test_columns_are_the_arrays_pa_array_gives(values, dtype, arrow) -> None:
    got = column(values, dtype)
    assert got.type == arrow and got.null_count == 0 and len(got) == len(values)
    assert np.array_equal(got.to_numpy(zero_copy_only=False), np.asarray(values, dtype=dtype), equal_nan=True)


def test_string_columns_hold_any_text() -> None:
    texts = ["train_loss", "", "ça va", "日本", "a" * 1000]
    got = strings(texts)
    assert got.type == pa.string() and got.to_pylist() == texts and got.equals(pa.array(texts, pa.string()))
    assert strings([]).to_pylist() == []


def test_storing_points_imports_no_pandas(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        from storage.metric_store import MetricStore, PointsBatch
        store = MetricStore({str(tmp_path / "m.duckdb")!r})
        batch = PointsBatch("run-a", 0, 0, np.arange(4), ["train_loss"] * 3 + ["test_loss"],
                            np.array([1.0, float("nan"), 0.5, 2.0]))
        assert store.ingest([batch]) == 4 and store.ingest([batch]) == 0  # a replay is not stored twice
        rows = store.conn.execute("SELECT step, metric, value FROM points ORDER BY step").fetchall()
        assert [r[:2] for r in rows] == [(0, "train_loss"), (1, "train_loss"), (2, "train_loss"), (3, "test_loss")]
        assert rows[1][2] != rows[1][2] and rows[3][2] == 2.0  # NaN stored as NaN, not NULL
        store.close()
        print("pandas" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
