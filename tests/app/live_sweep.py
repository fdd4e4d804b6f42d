"""A sweep to watch while it runs: three registered runs (γ 0.1, 1, 10 of a width-8 MLP) in a fresh
data folder, and a publisher to its bus to play the worker (the progress tests of the Runs page and
of `sweep --wait`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.config import ModelConfig, RunConfig
from storage.bus import open_publisher
from storage.registry import Registry
from storage.settings import Settings, load_settings


def three_runs(tmp_path: Path, steps: int) -> tuple[Settings, Registry, str, tuple[str, str, str], Any]:
    """(settings, an open registry, the sweep's id, its three run ids, a publisher); the spec says `steps`."""
    settings = load_settings(data_dir=tmp_path / "data")
    settings.ensure_dirs()
    configs = [RunConfig(model=ModelConfig(width=8, depth=3), gamma=g, eta=0.1, seed=0) for g in (0.1, 1.0, 10.0)]
    reg = Registry(settings.registry_url)
    sweep_id = reg.create_sweep("live", "t", {"train": {"steps": steps}})
    reg.add_runs(sweep_id, configs)
    a, b, c = (cfg.run_id for cfg in configs)
    return settings, reg, sweep_id, (a, b, c), open_publisher(settings)
