"""gamma-lab engine: μP-γ networks, online data streams, the batched ensemble trainer, metrics and
analysis. Imports only torch and numpy (docs/design.md §3)."""

from engine.config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig

__all__ = ["ConfigError", "DataConfig", "ModelConfig", "RunConfig", "TrainConfig"]
