"""Launch presets: sweep specs in the same dict shape as the TOML file (`SweepSpec.from_dict`)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

CIFAR5M_DIR = "cifar5m"

# Well under a minute on two shared CPU cores (~25 s, mostly worker start-up): 12 cells of a narrow
# MLP, 200 steps each, trained as one ensemble. The η range reaches past η_max at γ = 0.1, so the
# portrait shows converged and diverged cells side by side.
DEMO: dict[str, Any] = {
    "name": "quick-demo-mlp-mnist1d",  # not demo.toml's name: another config (width, steps, metrics)
    "model": {"arch": "mlp", "width": 32, "depth": 3, "activation": "relu", "centered": True},
    "data": {"dataset": "mnist1d"},
    "train": {"loss": "mse", "batch_size": 32, "steps": 200, "dtype": "auto", "eval_points": 8,
              "metrics": ["test", "alignment", "sharpness", "movement"]},
    "grid": {"gamma": [0.1, 1.0, 10.0], "eta": [0.01, 0.1, 1.0, 10.0], "seeds": [0]},
}

# The paper's picture: γ from lazy (1e-3) to rich (1e2), η over many decades, two seeds.
LAZY_TO_RICH: dict[str, Any] = {
    "name": "lazy-to-rich-mlp",
    "model": {"arch": "mlp", "width": 256, "depth": 3, "activation": "relu", "centered": True},
    "data": {"dataset": "mnist1d"},
    "train": {"loss": "mse", "batch_size": 128, "steps": 2000, "dtype": "auto", "eval_points": 20,
              "metrics": ["test", "alignment", "sharpness", "movement"]},
    "grid": {"gamma": {"from": 1e-3, "to": 1e2, "per_decade": 1},
             "eta": {"from": 1e-4, "to": 1e2, "per_decade": 2}, "seeds": [0, 1]},
}

CNN_CIFAR5M: dict[str, Any] = {
    "name": "cnn-cifar5m",
    "model": {"arch": "cnn", "width": 64, "depth": 4, "activation": "relu", "centered": True},
    "data": {"dataset": "cifar5m", "path": CIFAR5M_DIR},
    "train": {"loss": "mse", "batch_size": 128, "steps": 5000, "dtype": "auto", "eval_points": 20,
              "metrics": ["test", "alignment", "movement"]},
    "grid": {"gamma": {"from": 1e-2, "to": 1e2, "per_decade": 1},
             "eta": {"from": 1e-4, "to": 1e1, "per_decade": 2}, "seeds": [0]},
}


def available_presets(data_dir: Path) -> dict[str, dict[str, Any]]:
    """Label -> spec dict. The CIFAR-5M preset appears only when its files are in the data folder."""
    presets = {"Quick demo (MLP, MNIST-1D, ~1 min on CPU)": DEMO,
               "Lazy-to-rich MLP sweep (MNIST-1D)": LAZY_TO_RICH}
    folder = data_dir / CIFAR5M_DIR
    if folder.is_dir() and any(folder.iterdir()):
        presets["CNN on CIFAR-5M"] = CNN_CIFAR5M
    return {label: copy.deepcopy(spec) for label, spec in presets.items()}
