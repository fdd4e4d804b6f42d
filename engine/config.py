"""Frozen configuration objects: one dataclass per concept, JSON round-trip, content-hash identity.

A run is one (γ, η, seed) cell of a sweep:  RunConfig(model, data, train, gamma, eta, seed).
Its identity (`run_id`) is a hash of its canonical JSON, so re-launching the same cell finds the
same row. Runs that share a `shape_key` (everything except γ, η, seed, with the dtype resolved)
can be trained together as one batched ensemble.

Every constructor validates; a bad value raises `ConfigError` naming the field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import unicodedata
from dataclasses import dataclass, field
from typing import Any

ARCHS = ("mlp", "cnn", "resnet", "vit")
ACTIVATIONS = ("relu", "tanh", "linear")
DATASETS = ("teacher", "mnist1d", "digits", "cifar5m", "mnist1m", "npz")
FILE_DATASETS = ("cifar5m", "mnist1m", "npz")
IMAGE_ARCHS = ("cnn", "resnet", "vit")
DIGITS_MAX_HELD_OUT = 300  # the 8×8 digits hold out at most this many of their 1,797 images
LOSSES = ("mse", "xent")
DTYPES = ("auto", "float32", "float64")
# "function" (opt-in, not in TrainConfig's default): a snapshot of the final function, engine.function_probe
METRICS = ("test", "alignment", "sharpness", "movement", "function")
OPTIMIZERS = ("sgd", "adam")  # adam: engine/optim.py (per-layer μP rates, design.md §2 "Adam")

# Below this γ the signal f = (network output)/γ·(small change) drowns in float32 round-off:
# design.md §2 asks for float64 automatically.
FLOAT64_GAMMA_THRESHOLD = 1e-2


class ConfigError(ValueError):
    """A configuration value is not allowed. `field` is the dotted path, e.g. 'model.width'."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


# ----------------------------------------------------------------------------- validation helpers


def check_text(field: str, value: Any) -> None:
    """A string field holds no control character (Unicode category Cc: NUL, newline, ESC, DEL, ...).
    A NUL in a sweep name was stored and broke every table that printed it; an escape sequence in a
    message would drive the user's terminal. Raises ConfigError naming the field and the position."""
    if not isinstance(value, str):
        return
    for i, ch in enumerate(value):
        if unicodedata.category(ch) == "Cc":
            raise ConfigError(field, f"must not contain control characters (got {ch!r} at position {i})")


def printable(text: Any) -> str:
    """`text` with its control characters escaped (\\x00, \\n): safe to put in a one-line message."""
    s = str(text)
    return "".join(repr(ch)[1:-1] if unicodedata.category(ch) == "Cc" else ch for ch in s)


def _int(field: str, value: Any, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(field, f"must be an integer (got {value!r})")
    if value < minimum or (maximum is not None and value > maximum):
        allowed = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ConfigError(field, f"must be an integer {allowed} (got {value})")


def _positive(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(field, f"must be a number > 0 (got {value!r})")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(field, f"must be a finite number > 0 (got {value})")


def _choice(field: str, value: Any, allowed: tuple[str, ...]) -> None:
    check_text(field, value)
    if value not in allowed:
        raise ConfigError(field, f"must be one of {', '.join(allowed)} (got {value!r})")


def _from_mapping(cls: type, section: str, data: Any) -> Any:
    """Build a dataclass from a mapping, rejecting unknown keys by name."""
    if not isinstance(data, dict):
        raise ConfigError(section, f"must be a table/object (got {type(data).__name__})")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{section}.{printable(unknown[0])}", f"unknown field; allowed fields are {', '.join(sorted(names))}"
        )
    kwargs = dict(data)
    for f in dataclasses.fields(cls):
        if f.name in kwargs and isinstance(kwargs[f.name], list):
            kwargs[f.name] = tuple(kwargs[f.name])  # JSON has no tuples
    try:
        return cls(**kwargs)
    except TypeError as exc:  # wrong types that the validators did not catch
        raise ConfigError(section, str(exc)) from None


# ----------------------------------------------------------------------------- the configs


@dataclass(frozen=True)
class ModelConfig:
    """The network. depth L counts weight layers (an L=3 MLP has two hidden ReLU layers).

    `width` is N: hidden width for the MLP, base channel count for cnn/resnet, embedding size for vit.
    cnn has a fixed depth of 4 (design.md); resnet/vit read `depth` as blocks.
    """

    arch: str = "mlp"
    width: int = 128
    depth: int = 3
    activation: str = "relu"
    centered: bool = True
    patch: int = 4  # vit: patch side in pixels
    heads: int = 2  # vit: attention heads (width must be divisible by heads)

    def __post_init__(self) -> None:
        _choice("model.arch", self.arch, ARCHS)
        _int("model.width", self.width, 1, 1 << 16)
        _int("model.depth", self.depth, 2, 64)
        _choice("model.activation", self.activation, ACTIVATIONS)
        if not isinstance(self.centered, bool):
            raise ConfigError("model.centered", f"must be true or false (got {self.centered!r})")
        _int("model.patch", self.patch, 1, 64)
        _int("model.heads", self.heads, 1, 64)
        if self.arch == "cnn" and self.depth != 4:
            raise ConfigError("model.depth", f"the reference cnn has exactly 4 weight layers (got {self.depth})")
        if self.arch == "vit" and self.width % self.heads:
            raise ConfigError("model.heads", f"must divide model.width={self.width} (got {self.heads})")


@dataclass(frozen=True)
class DataConfig:
    """Where the online stream comes from. File-backed sets read `path`, relative to the data folder.

    teacher: Gaussian inputs of `input_dim` (or images channels×image_size² when image_size > 0),
    targets from a fixed random teacher network with `n_classes` outputs.
    `data_seed` fixes the stream: every member of an ensemble sees the same batch at step t.
    """

    dataset: str = "mnist1d"
    path: str | None = None
    input_dim: int = 32
    image_size: int = 0
    channels: int = 1
    n_classes: int = 10
    noise: float = 0.0
    test_size: int = 1000
    data_seed: int = 0

    def __post_init__(self) -> None:
        _choice("data.dataset", self.dataset, DATASETS)
        check_text("data.path", self.path)
        if self.dataset in FILE_DATASETS:
            if not isinstance(self.path, str) or not self.path.strip():
                raise ConfigError(
                    "data.path", f"dataset {self.dataset!r} reads files: give a path inside the data folder"
                )
        elif self.path is not None:
            raise ConfigError("data.path", f"only file-backed datasets ({', '.join(FILE_DATASETS)}) take a path")
        if self.path is not None and (self.path.startswith("/") or ".." in self.path.replace("\\", "/").split("/")):
            raise ConfigError("data.path", f"must be relative and stay inside the data folder (got {self.path!r})")
        _int("data.input_dim", self.input_dim, 1, 1 << 20)
        _int("data.image_size", self.image_size, 0, 1024)
        _int("data.channels", self.channels, 1, 64)
        _int("data.n_classes", self.n_classes, 1, 100_000)
        if isinstance(self.noise, bool) or not isinstance(self.noise, int | float) or not (
            math.isfinite(self.noise) and self.noise >= 0
        ):
            raise ConfigError("data.noise", f"must be a finite number >= 0 (got {self.noise!r})")
        object.__setattr__(self, "noise", float(self.noise))
        _int("data.test_size", self.test_size, 1, 10_000_000)
        _int("data.data_seed", self.data_seed, 0, 2**31 - 1)

    @property
    def held_out_size(self) -> int:
        """The examples in the held-out test set: test_size, but at most DIGITS_MAX_HELD_OUT of the
        8×8 digits (a small set that must still train: engine.data_digits)."""
        return min(self.test_size, DIGITS_MAX_HELD_OUT) if self.dataset == "digits" else self.test_size


@dataclass(frozen=True)
class TrainConfig:
    """Online training. `optimizer` "sgd" (default): plain SGD with step size width·η; "adam": Adam
    with per-layer rates η/sqrt(fan_in) before the readout and η at the readout (engine/optim.py).
    `eval_points` log-spaced steps get the costly metrics (the subset named in `metrics`), fewer on
    short runs (`eval_budget`); train_loss is logged every step."""

    loss: str = "mse"
    batch_size: int = 128
    steps: int = 1000
    dtype: str = "auto"
    eval_points: int = 30
    metrics: tuple[str, ...] = ("test", "alignment", "sharpness", "movement")
    divergence_factor: float = 1e3
    probe_size: int = 128
    optimizer: str = "sgd"  # left out of the canonical JSON when "sgd": ids from before it stay valid
    # the costly metrics' share of the training time the eval schedule keeps within (engine.diagnostics_cost:
    # fewer eval points on short runs, never fewer than 3); 0: no bound, every point asked for up to one
    # per 20 steps. Left out of the canonical JSON at its default, as optimizer
    eval_budget: float = 0.5

    def __post_init__(self) -> None:
        _choice("train.loss", self.loss, LOSSES)
        _int("train.batch_size", self.batch_size, 1, 1 << 20)
        _int("train.steps", self.steps, 1, 100_000_000)
        _choice("train.dtype", self.dtype, DTYPES)
        _int("train.eval_points", self.eval_points, 0, 10_000)
        if not isinstance(self.metrics, tuple):
            raise ConfigError("train.metrics", f"must be a list drawn from {', '.join(METRICS)}")
        for m in self.metrics:
            _choice("train.metrics", m, METRICS)
        _positive("train.divergence_factor", self.divergence_factor)
        object.__setattr__(self, "divergence_factor", float(self.divergence_factor))
        _int("train.probe_size", self.probe_size, 1, 1 << 16)
        _choice("train.optimizer", self.optimizer, OPTIMIZERS)
        budget = self.eval_budget
        if isinstance(budget, bool) or not isinstance(budget, int | float) or not 0 <= budget <= 1000:
            raise ConfigError(
                "train.eval_budget", f"must be a number from 0 (no bound) to 1000, a share of training (got {budget!r})"
            )
        object.__setattr__(self, "eval_budget", float(budget))


@dataclass(frozen=True)
class RunConfig:
    """One cell: the shared setting plus γ (output multiplier), η (raw rate; SGD step = width·η), seed."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    gamma: float = 1.0
    eta: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        _positive("gamma", self.gamma)
        _positive("eta", self.eta)
        # 1 and 1.0 must hash alike: store γ, η as floats.
        object.__setattr__(self, "gamma", float(self.gamma))
        object.__setattr__(self, "eta", float(self.eta))
        _int("seed", self.seed, 0, 2**31 - 1)
        if self.model.arch in IMAGE_ARCHS and not self.is_image_data:
            raise ConfigError(
                "data.dataset",
                f"model.arch={self.model.arch!r} needs images: digits, cifar5m, mnist1m, npz with "
                f"4-D X, or teacher with image_size > 0 (got {self.data.dataset!r})",
            )

    @property
    def is_image_data(self) -> bool:
        d = self.data
        return d.dataset in ("digits", "cifar5m", "mnist1m", "npz") or (d.dataset == "teacher" and d.image_size > 0)

    # -- dtype and identity

    @property
    def resolved_dtype(self) -> str:
        """'float32' or 'float64'. 'auto' means float64 when γ < 1e-2 (lazy nets lose the signal)."""
        if self.train.dtype != "auto":
            return self.train.dtype
        return "float64" if self.gamma < FLOAT64_GAMMA_THRESHOLD else "float32"

    @property
    def learning_rate(self) -> float:
        """The base step size: N·η for SGD; η for Adam (engine/optim.py scales it per layer)."""
        return self.eta if self.train.optimizer == "adam" else self.model.width * self.eta

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["train"]["metrics"] = list(self.train.metrics)
        if self.train.optimizer == "sgd":
            del d["train"]["optimizer"]  # the default is not written: run_id and shape_key stay as they were
        if self.train.eval_budget == TrainConfig.eval_budget:
            del d["train"]["eval_budget"]  # likewise
        return d

    def to_json(self) -> str:
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> RunConfig:
        if not isinstance(data, dict):
            raise ConfigError("run", f"must be an object (got {type(data).__name__})")
        allowed = {"model", "data", "train", "gamma", "eta", "seed"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(printable(unknown[0]), f"unknown field; allowed fields are {', '.join(sorted(allowed))}")
        return cls(
            model=_from_mapping(ModelConfig, "model", data.get("model", {})),
            data=_from_mapping(DataConfig, "data", data.get("data", {})),
            train=_from_mapping(TrainConfig, "train", data.get("train", {})),
            gamma=data.get("gamma", 1.0),
            eta=data.get("eta", 0.1),
            seed=data.get("seed", 0),
        )

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError("run", f"not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @functools.cached_property
    def run_id(self) -> str:
        """Content hash of the canonical JSON: the same cell always has the same id. Computed once per
        (frozen) config: a worker asked for it 15 times per run (0.1 s of a 36-run unit)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @functools.cached_property
    def shape_key(self) -> str:
        """Runs with equal shape keys can share one ensemble (same shapes, data stream and dtype)."""
        d = self.to_dict()
        for k in ("gamma", "eta", "seed"):
            d.pop(k)
        d["dtype"] = self.resolved_dtype
        return hashlib.sha256(canonical_json(d).encode()).hexdigest()[:16]

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, floats in repr form: equal configs give equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
