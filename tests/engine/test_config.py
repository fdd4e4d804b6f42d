"""Config validation, JSON round-trip and identity."""

import math

import pytest

from engine.config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig


def test_json_round_trip_and_identity_are_stable() -> None:
    run = RunConfig(
        model=ModelConfig(arch="mlp", width=64, depth=4, activation="tanh"),
        data=DataConfig(dataset="teacher", input_dim=16, n_classes=3),
        train=TrainConfig(steps=10, metrics=("test",)),
        gamma=0.5,
        eta=0.25,
        seed=3,
    )
    again = RunConfig.from_json(run.to_json())
    assert again == run
    assert again.run_id == run.run_id
    assert len(run.run_id) == 16


def test_integer_and_float_gamma_hash_alike() -> None:
    assert RunConfig(gamma=1, eta=1).run_id == RunConfig(gamma=1.0, eta=1.0).run_id


def test_identity_changes_with_every_field() -> None:
    base = RunConfig()
    variants = [
        base.replace(gamma=2.0),
        base.replace(eta=0.2),
        base.replace(seed=1),
        base.replace(model=ModelConfig(width=64)),
        base.replace(train=TrainConfig(steps=7)),
        base.replace(data=DataConfig(data_seed=5)),
    ]
    assert len({v.run_id for v in variants} | {base.run_id}) == len(variants) + 1


def test_shape_key_ignores_cell_but_not_dtype() -> None:
    a = RunConfig(gamma=1.0, eta=0.1, seed=0)
    assert a.shape_key == a.replace(gamma=3.0, eta=2.0, seed=9).shape_key
    # γ < 1e-2 resolves to float64 under dtype=auto: cannot share a float32 ensemble
    lazy = a.replace(gamma=1e-3)
    assert lazy.resolved_dtype == "float64" and a.resolved_dtype == "float32"
    assert lazy.shape_key != a.shape_key
    forced = RunConfig(train=TrainConfig(dtype="float32"), gamma=1e-3)
    assert forced.resolved_dtype == "float32"


def test_learning_rate_is_width_times_eta() -> None:
    assert RunConfig(model=ModelConfig(width=256), eta=0.01).learning_rate == pytest.approx(2.56)


@pytest.mark.parametrize(
    ("build", "field", "words"),
    [
        (lambda: RunConfig(gamma=-1.0), "gamma", "> 0"),
        (lambda: RunConfig(gamma=math.inf), "gamma", "finite"),
        (lambda: RunConfig(gamma=math.nan), "gamma", "finite"),
        (lambda: RunConfig(eta=0.0), "eta", "> 0"),
        (lambda: RunConfig(gamma="big"), "gamma", "number"),  # type: ignore[arg-type]
        (lambda: RunConfig(seed=-2), "seed", "between 0"),
        (lambda: ModelConfig(width=0), "model.width", "between 1"),
        (lambda: ModelConfig(depth=1), "model.depth", "between 2"),
        (lambda: ModelConfig(arch="transformer"), "model.arch", "mlp, cnn, resnet, vit"),
        (lambda: ModelConfig(activation="gelu"), "model.activation", "relu, tanh, linear"),
        (lambda: ModelConfig(arch="cnn", depth=3), "model.depth", "4"),
        (lambda: ModelConfig(arch="vit", width=10, heads=3), "model.heads", "divide"),
        (lambda: TrainConfig(batch_size=0), "train.batch_size", "between 1"),
        (lambda: TrainConfig(steps=0), "train.steps", "between 1"),
        (lambda: TrainConfig(loss="hinge"), "train.loss", "mse, xent"),
        (lambda: TrainConfig(dtype="float16"), "train.dtype", "auto, float32, float64"),
        (lambda: TrainConfig(metrics=("test", "vibes")), "train.metrics", "alignment"),
        (lambda: DataConfig(dataset="imagenet"), "data.dataset", "teacher, mnist1d"),
        (lambda: DataConfig(dataset="npz"), "data.path", "data folder"),
        (lambda: DataConfig(dataset="npz", path="/etc/passwd"), "data.path", "inside the data folder"),
        (lambda: DataConfig(dataset="npz", path="a/../../b.npz"), "data.path", "inside the data folder"),
        (lambda: DataConfig(dataset="mnist1d", path="x.npz"), "data.path", "only file-backed"),
        (lambda: DataConfig(noise=-0.1), "data.noise", ">= 0"),
        (lambda: RunConfig(model=ModelConfig(arch="cnn", depth=4)), "data.dataset", "needs images"),
    ],
)
def test_bad_values_name_the_field_and_what_is_allowed(build, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        build()
    assert info.value.field == field
    assert words in str(info.value)


def test_unknown_keys_are_named() -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({"model": {"widht": 3}})
    assert info.value.field == "model.widht"
    assert "width" in str(info.value)
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({"gama": 1.0})
    assert info.value.field == "gama"


def test_malformed_json_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_json("{not json")
    assert info.value.field == "run"


def test_image_archs_accept_image_data() -> None:
    run = RunConfig(
        model=ModelConfig(arch="cnn", depth=4, width=4),
        data=DataConfig(dataset="teacher", image_size=8, channels=3),
    )
    assert run.is_image_data
    RunConfig(model=ModelConfig(arch="vit", width=8, heads=2), data=DataConfig(dataset="digits"))
