"""A healthy metric file can be shorter than its header says (a checkpoint cuts free blocks off the end
after writing the header). Then the open checks that every block in use lies inside the file, and a
read-write open also probes the indexes in a rolled-back write transaction. A read-only open (export,
status, a read-only data folder) must not run that probe: DuckDB refuses any INSERT there, and the
refusal was reported as "metrics file ... cannot be opened" about a sound file (seen in
test_sweep_wait_export_and_reuse, about one run in three on a loaded machine)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from storage.metric_store import MetricStore, PointsBatch


def test_a_short_but_sound_file_opens_read_only(tmp_path: Path) -> None:
    path = tmp_path / "metrics.duckdb"
    with MetricStore(path) as store:
        store.ingest([PointsBatch("run-a", 0, 0, np.arange(100), ["train_loss"] * 100, np.linspace(1, 0, 100))])
        store.checkpoint()
    reader = MetricStore(path, read_only=True)
    try:
        reader._check_used_blocks(present=10**9)  # "shorter than its header": every block in use lies inside
        assert reader.count_points("run-a") == 100
    finally:
        reader.close()
