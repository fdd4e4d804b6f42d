"""A corrupt registry or metric file gets a clear error naming the file and what to do; never a reset.

A user who overwrote or truncated <data>/metrics.duckdb or <data>/registry.sqlite saw a raw DuckDB /
SQLAlchemy traceback from every command."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from storage.metric_store import MetricStore, PointsBatch, StoreCorrupt
from storage.registry import Registry, RegistryUnreadable


def _junk(path: Path, n: int = 5000) -> bytes:
    data = np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("read_only", [False, True])
def test_junk_metrics_file_is_named_and_kept(tmp_path: Path, read_only: bool) -> None:
    path = tmp_path / "metrics.duckdb"
    before = _junk(path)
    with pytest.raises(StoreCorrupt) as info:
        MetricStore(path, read_only=read_only)
    message = str(info.value)
    assert str(path.resolve()) in message and "Move it aside" in message
    assert path.read_bytes() == before  # nothing replaced, nothing written


def test_truncated_metrics_file_is_named_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "metrics.duckdb"
    store = MetricStore(path)
    n = 50_000
    store.ingest([PointsBatch("run-a", 0, 0, np.arange(n, dtype=np.int64), ["train_loss"] * n,
                              np.linspace(1.0, 0.0, n))])
    store.checkpoint()
    store.close()
    full = path.read_bytes()
    assert len(full) > 300_000
    path.write_bytes(full[: len(full) * 3 // 4])
    cut = path.read_bytes()
    with pytest.raises(StoreCorrupt, match="Move it aside"):
        MetricStore(path)
    assert path.read_bytes() == cut
    assert not Path(str(path) + ".wal").exists() or os.path.getsize(str(path) + ".wal") == 0


def test_junk_registry_is_named_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    before = _junk(path)
    with pytest.raises(RegistryUnreadable) as info:
        Registry(f"sqlite:///{path}")
    assert str(path.resolve()) in str(info.value) and "Move it aside" in str(info.value)
    assert path.read_bytes() == before


def test_truncated_registry_is_named_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    with Registry(f"sqlite:///{path}") as reg:
        for i in range(30):
            reg.create_sweep(f"sweep-{i}", "alice", {"pad": "x" * 2000}, executor="local")
    full = path.read_bytes()
    path.write_bytes(full[: len(full) // 2])
    cut = path.read_bytes()
    with pytest.raises(RegistryUnreadable, match="not a readable SQLite database"):
        with Registry(f"sqlite:///{path}") as reg:
            reg.list_sweeps(limit=100)
    assert path.read_bytes() == cut
