"""app.logic.source: the Runs page's sweep table shows where each sweep trains."""

from __future__ import annotations

from pathlib import Path

from app.logic.source import SWEEP_COLUMNS, sweeps_frame
from storage.registry import Registry


def test_sweep_table_shows_the_launch_device(tmp_path: Path) -> None:
    # a GPU sweep and a CPU sweep must be told apart on the Runs page (reruns go back to that device)
    reg = Registry(f"sqlite:///{tmp_path / 'registry.sqlite'}")
    gpu = reg.create_sweep("on gpu", "t", {}, executor="celery", device="cuda")
    cpu = reg.create_sweep("on cpu", "t", {})
    frame = sweeps_frame(reg.list_sweeps()).set_index("sweep_id")
    assert list(frame.reset_index().columns) == list(SWEEP_COLUMNS)
    assert frame.loc[gpu, "device"] == "cuda" and frame.loc[gpu, "executor"] == "celery"
    assert frame.loc[cpu, "device"] == "cpu"
    reg.close()
