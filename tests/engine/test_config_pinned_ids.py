"""A run's identity is pinned: run_id and shape_key of a fixed RunConfig are literal values here.

Stored results are found by run_id (the registry row, the DuckDB points) and ensembles are packed by
shape_key. Adding a config field with a default changes the canonical JSON, hence every id: each
stored result would silently become an orphan and every cell would train again. If this test fails,
either keep the JSON as it was (leave a default out of to_dict) or ship a registry migration that
re-keys the stored runs, then update the literals below.
"""

from __future__ import annotations

from engine.config import DataConfig, ModelConfig, RunConfig, TrainConfig

CONFIG = RunConfig(
    model=ModelConfig(arch="mlp", width=64, depth=3),
    data=DataConfig(dataset="teacher", input_dim=8, n_classes=2),
    train=TrainConfig(steps=100, batch_size=16),
    gamma=0.5,
    eta=0.25,
    seed=3,
)
CANONICAL = (
    '{"data":{"channels":1,"data_seed":0,"dataset":"teacher","image_size":0,"input_dim":8,"n_classes":2,'
    '"noise":0.0,"path":null,"test_size":1000},"eta":0.25,"gamma":0.5,"model":{"activation":"relu",'
    '"arch":"mlp","centered":true,"depth":3,"heads":2,"patch":4,"width":64},"seed":3,"train":{"batch_size":16,'
    '"divergence_factor":1000.0,"dtype":"auto","eval_points":30,"loss":"mse","metrics":["test","alignment",'
    '"sharpness","movement"],"probe_size":128,"steps":100}}'
)


def test_the_canonical_json_is_pinned() -> None:
    assert CONFIG.to_json() == CANONICAL  # a new field shows up here first, by name


def test_run_id_and_shape_key_are_pinned() -> None:
    assert CONFIG.run_id == "4d919b3b1d0f890c"
    assert CONFIG.shape_key == "6e1ab46a90e4ba45"


def test_shape_key_ignores_gamma_eta_and_seed_but_run_id_does_not() -> None:
    other = CONFIG.replace(gamma=2.0, eta=0.01, seed=7)
    assert other.shape_key == CONFIG.shape_key
    assert other.run_id != CONFIG.run_id


def test_a_config_read_back_from_its_json_keeps_its_ids() -> None:
    again = RunConfig.from_json(CONFIG.to_json())
    assert (again.run_id, again.shape_key) == (CONFIG.run_id, CONFIG.shape_key)
