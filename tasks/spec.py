"""A sweep, described once: the TOML file a user writes and the object behind the web form.

    name = "mlp-mnist1d"
    [model] / [data] / [train]    -- engine.config's ModelConfig, DataConfig, TrainConfig fields
    [grid]
    gamma = [0.001, 0.01, 0.1, 1.0]                   # a list, one number, or a log range:
    eta = { from = 1e-4, to = 10.0, per_decade = 2 }  # raw η; the SGD step is width·η (adam: η per layer)
    seeds = [0, 1]                                    # a list, or a count (3 -> 0, 1, 2)
    adaptive = false                                  # true: find η_max per γ in rounds (tasks.api)
    below_max_decades = 3                             # adaptive: run down to η_max / 10^this

Parsing collects *every* problem (each a ConfigError naming its field and what is allowed) and
raises them together as one SpecError, so the form can show each at its field and the CLI can print
them all at once. Nothing but SpecError ever leaves `from_toml` / `from_dict` (fuzzed in the tests).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from engine.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    check_text,
    printable,
)
from storage.settings import Settings

# A log range with per_decade = 1e9 must not allocate a billion floats before the cell limit says no.
MAX_AXIS_VALUES = 10_000
TOP_LEVEL_KEYS = ("name", "model", "data", "train", "grid")
GRID_KEYS = ("gamma", "eta", "seeds", "adaptive", "below_max_decades")
GRID_ALLOWED = ", ".join(GRID_KEYS)
RANGE_KEYS = ("from", "to", "per_decade")
MAX_NAME_LENGTH = 200


class SpecError(ConfigError):
    """Every problem found in a spec. `.errors` holds one ConfigError per problem (field + message)."""

    def __init__(self, errors: list[ConfigError]):
        self.errors = list(errors)
        lines = "\n".join(f"  {e.field}: {e.message}" for e in self.errors)
        noun = "problem" if len(self.errors) == 1 else "problems"
        first = self.errors[0].field if self.errors else "spec"
        super().__init__(first, f"{len(self.errors)} {noun} in the sweep spec:\n{lines}")

    def __str__(self) -> str:
        return self.message

    def lines(self) -> list[str]:
        return [f"{e.field}: {e.message}" for e in self.errors]


@dataclass(frozen=True)
class GridSpec:
    """The γ × η × seed grid. Values are stored expanded (a log range becomes its list)."""

    gammas: tuple[float, ...] = (1.0,)
    etas: tuple[float, ...] = (0.1,)
    seeds: tuple[int, ...] = (0,)
    adaptive: bool = False
    below_max_decades: float = 3.0

    @property
    def n_cells(self) -> int:
        return len(self.gammas) * len(self.etas) * len(self.seeds)


def loss_conventions(specs: Iterable[Any]) -> str:
    """The loss conventions of these stored specs (SweepSpec.loss_convention), each stated once and
    '; '-joined; a spec this gamma-lab cannot read is left out; '' when none is left."""
    found: dict[str, None] = {}
    for spec in specs:
        try:
            found[SweepSpec.from_dict(spec).loss_convention()] = None
        except SpecError:
            continue
    return "; ".join(found)


@dataclass(frozen=True)
class SweepSpec:
    name: str = "sweep"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    grid: GridSpec = field(default_factory=GridSpec)

    # -- parsing

    @classmethod
    def from_toml(cls, text: str) -> SweepSpec:
        if not isinstance(text, str):
            raise SpecError([ConfigError("spec", f"must be TOML text (got {type(text).__name__})")])
        try:
            data = tomllib.loads(text)
        except (tomllib.TOMLDecodeError, ValueError, RecursionError) as exc:
            raise SpecError([ConfigError("spec", f"not valid TOML: {exc}")]) from None
        if not data:  # an empty (or comments-only) file is a mistake, not "one cell of every default"
            raise SpecError([ConfigError("spec", "is empty: a sweep needs at least a [grid] table with gamma "
                                                 "and eta (see app/examples/demo.toml)")])
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> SweepSpec:
        try:
            return _parse(data)
        except SpecError:
            raise
        except ConfigError as exc:
            raise SpecError([exc]) from None
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:  # defensive: never a traceback
            raise SpecError([ConfigError("spec", f"could not be read: {exc}")]) from None

    # -- output

    def loss_convention(self) -> str:
        """How this sweep's logged losses are normalized, and the factor to the paper's convention."""
        from engine.data import n_outputs
        from engine.metrics import loss_convention

        return loss_convention(self.train.loss, n_outputs(self.data))

    def to_dict(self) -> dict[str, Any]:
        train = dataclasses.asdict(self.train)
        train["metrics"] = list(self.train.metrics)
        if self.train.optimizer == "sgd":
            del train["optimizer"]  # the default stays unwritten, as in RunConfig.to_dict
        if self.train.eval_budget == TrainConfig.eval_budget:
            del train["eval_budget"]
        data = {k: v for k, v in dataclasses.asdict(self.data).items() if v is not None}
        return {
            "name": self.name,
            "model": dataclasses.asdict(self.model),
            "data": data,
            "train": train,
            "grid": {
                "gamma": list(self.grid.gammas),
                "eta": list(self.grid.etas),
                "seeds": list(self.grid.seeds),
                "adaptive": self.grid.adaptive,
                "below_max_decades": self.grid.below_max_decades,
            },
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_toml(self) -> str:
        d = self.to_dict()
        out = [f"name = {_toml_value(d['name'])}"]
        for section in ("model", "data", "train", "grid"):
            out.append(f"\n[{section}]")
            out.extend(f"{k} = {_toml_value(v)}" for k, v in d[section].items())
        return "\n".join(out) + "\n"

    # -- cells

    def cell(self, gamma: float, eta: float, seed: int) -> RunConfig:
        return RunConfig(model=self.model, data=self.data, train=self.train, gamma=gamma, eta=eta, seed=seed)

    def cells(self) -> list[RunConfig]:
        """The full grid, γ-major: every (γ, η, seed) cell as a RunConfig."""
        g = self.grid
        return [self.cell(gm, et, sd) for gm, et, sd in itertools.product(g.gammas, g.etas, g.seeds)]


# ----------------------------------------------------------------------------- parsing helpers


def _parse(data: Any) -> SweepSpec:
    errors: list[ConfigError] = []
    if not isinstance(data, dict):
        raise SpecError([ConfigError("spec", f"must be a table/object (got {type(data).__name__})")])
    for key in sorted(set(map(str, data)) - set(TOP_LEVEL_KEYS)):
        allowed = ", ".join(TOP_LEVEL_KEYS)
        errors.append(ConfigError(printable(key), f"unknown field; allowed top-level fields are {allowed}"))

    name = data.get("name", "sweep")
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH:
        errors.append(ConfigError("name", f"must be a non-empty string of at most {MAX_NAME_LENGTH} characters"))
        name = "sweep"
    try:
        check_text("name", name)
    except ConfigError as exc:
        errors.append(exc)
        name = "sweep"

    model = _section(ModelConfig, "model", data.get("model", {}), ("arch",), errors)
    dconf = _section(DataConfig, "data", data.get("data", {}), ("dataset", "path"), errors)
    train = _section(TrainConfig, "train", data.get("train", {}), (), errors)
    grid = _grid(data.get("grid", {}), errors)

    spec = None
    if model is not None and dconf is not None and train is not None and grid is not None:
        spec = SweepSpec(name=name, model=model, data=dconf, train=train, grid=grid)
        try:  # cross-section rules (an image architecture needs image data) live in RunConfig
            spec.cell(grid.gammas[0], grid.etas[0], grid.seeds[0])
        except ConfigError as exc:
            errors.append(exc)
    if errors or spec is None:
        raise SpecError(_dedupe(errors) or [ConfigError("spec", "invalid")])
    return spec


def _dedupe(errors: list[ConfigError]) -> list[ConfigError]:
    seen: set[tuple[str, str]] = set()
    out = []
    for e in errors:
        if (e.field, e.message) not in seen:
            seen.add((e.field, e.message))
            out.append(e)
    return out


def _section(cls: type, section: str, raw: Any, context: tuple[str, ...], errors: list[ConfigError]) -> Any:
    """Build one config dataclass; on failure, find every bad field, not only the first.

    Each field is also tried on its own (with the `context` fields, e.g. the dataset, that other
    rules depend on) so that `width = -1` and `activation = "gelu"` are both reported.
    """
    if not isinstance(raw, dict):
        errors.append(ConfigError(section, f"must be a table/object (got {type(raw).__name__})"))
        return None
    names = [f.name for f in dataclasses.fields(cls)]
    found: list[ConfigError] = []
    for key in sorted(set(map(str, raw)) - set(names)):
        allowed = ", ".join(sorted(names))
        found.append(ConfigError(f"{section}.{printable(key)}", f"unknown field; allowed fields are {allowed}"))
    known = {k: _tupled(v) for k, v in raw.items() if k in names}
    try:
        obj = cls(**known)
    except ConfigError as exc:
        obj = None
        whole = exc
    except (TypeError, ValueError, AttributeError) as exc:
        obj = None
        whole = ConfigError(section, str(exc))
    if obj is not None:
        if found:
            errors.extend(found)
            return None
        return obj
    ctx: dict[str, Any] = {}
    for key in context:  # keep a context field only if it is valid on its own
        if key in known:
            try:
                cls(**{**ctx, key: known[key]})
                ctx[key] = known[key]
            except (ConfigError, TypeError, ValueError, AttributeError):
                pass
    for key, value in known.items():
        # A context field is tried together with the other context fields as given: `dataset = "npz"`
        # and `path = "/etc/passwd"` each fail alone ("needs a path", "takes no path"), which would
        # hide the real problem (the path leaves the data folder) behind two contradictory messages.
        tried = {k: known[k] for k in context if k in known} if key in context else ctx
        try:
            cls(**{**tried, key: value})
        except ConfigError as exc:
            found.append(exc)
        except (TypeError, ValueError, AttributeError) as exc:
            found.append(ConfigError(f"{section}.{key}", str(exc)))
    if not any(e.field == whole.field and e.message == whole.message for e in found):
        found.append(whole)
    errors.extend(found)
    return None


def _tupled(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


def _axis(field_name: str, raw: Any, errors: list[ConfigError]) -> tuple[float, ...] | None:
    """γ or η: a number, a list of numbers, or {from, to, per_decade} (log-spaced, both ends kept)."""
    allowed = "a number > 0, a list of numbers > 0, or a log range { from = a, to = b, per_decade = n }"
    if _number(raw):
        raw = [raw]
    if isinstance(raw, dict):
        unknown = sorted(set(map(str, raw)) - set(RANGE_KEYS))
        if unknown:
            message = f"unknown field; a log range has {', '.join(RANGE_KEYS)}"
            errors.append(ConfigError(f"{field_name}.{printable(unknown[0])}", message))
            return None
        ok = True
        for key in ("from", "to"):
            v: Any = raw.get(key)
            if not _number(v) or not math.isfinite(v) or v <= 0:
                errors.append(ConfigError(f"{field_name}.{key}", f"must be a finite number > 0 (got {v!r})"))
                ok = False
        per = raw.get("per_decade", 1)
        if not _number(per) or not math.isfinite(per) or per <= 0:
            errors.append(ConfigError(f"{field_name}.per_decade", f"must be a finite number > 0 (got {per!r})"))
            ok = False
        if not ok:
            return None
        lo, hi = float(raw["from"]), float(raw["to"])
        if hi < lo:
            errors.append(ConfigError(field_name, f"log range needs from <= to (got from={lo}, to={hi})"))
            return None
        # counted as a float before anything is built: per_decade = 1e300 must not overflow int() or
        # allocate (the size is checked from the bounds alone)
        span = math.log10(hi / lo) * per + 1e-9  # inf for absurd bounds: compared, never int()-ed
        count = math.floor(span) + 1.0 if math.isfinite(span) else math.inf
        if not count <= MAX_AXIS_VALUES:
            shown = f"{count:,.0f}" if math.isfinite(count) else "too many"
            errors.append(
                ConfigError(
                    field_name,
                    f"log range gives {shown} values; at most {MAX_AXIS_VALUES:,} values per grid axis "
                    "(lower per_decade or narrow from/to)",
                )
            )
            return None
        n = int(count)
        values = [lo * 10 ** (i / per) for i in range(n)]
        return tuple(float(f"{v:.12g}") for v in values)
    if isinstance(raw, list):
        if not raw:
            errors.append(ConfigError(field_name, f"must not be empty; give {allowed}"))
            return None
        if len(raw) > MAX_AXIS_VALUES:
            errors.append(ConfigError(field_name, f"at most {MAX_AXIS_VALUES} values allowed (got {len(raw)})"))
            return None
        bad = [v for v in raw if not _number(v) or not math.isfinite(v) or v <= 0]
        if bad:
            errors.append(ConfigError(field_name, f"every value must be a finite number > 0 (got {bad[0]!r})"))
            return None
        return tuple(sorted({float(v) for v in raw}))
    errors.append(ConfigError(field_name, f"must be {allowed} (got {raw!r:.80})"))
    return None


def _seeds(raw: Any, errors: list[ConfigError]) -> tuple[int, ...] | None:
    allowed = "a list of integers in [0, 2^31-1], or a count n >= 1 meaning seeds 0..n-1"
    if isinstance(raw, int) and not isinstance(raw, bool):
        if not 1 <= raw <= MAX_AXIS_VALUES:
            errors.append(ConfigError("grid.seeds", f"must be {allowed}, at most {MAX_AXIS_VALUES} (got {raw})"))
            return None
        return tuple(range(raw))
    if isinstance(raw, list) and raw and len(raw) <= MAX_AXIS_VALUES:
        bad = [s for s in raw if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= 2**31 - 1]
        if not bad:
            return tuple(sorted(set(raw)))
    errors.append(ConfigError("grid.seeds", f"must be {allowed} (got {raw!r:.80})"))
    return None


def _grid(raw: Any, errors: list[ConfigError]) -> GridSpec | None:
    if not isinstance(raw, dict):
        errors.append(ConfigError("grid", f"must be a table/object (got {type(raw).__name__})"))
        return None
    n_before = len(errors)
    for key in sorted(set(map(str, raw)) - set(GRID_KEYS)):
        errors.append(ConfigError(f"grid.{printable(key)}", f"unknown field; allowed fields are {GRID_ALLOWED}"))
    gammas = _axis("grid.gamma", raw.get("gamma", [1.0]), errors)
    etas = _axis("grid.eta", raw.get("eta", [0.1]), errors)
    seeds = _seeds(raw.get("seeds", [0]), errors)
    adaptive = raw.get("adaptive", False)
    if not isinstance(adaptive, bool):
        errors.append(ConfigError("grid.adaptive", f"must be true or false (got {adaptive!r:.80})"))
    below = raw.get("below_max_decades", 3)
    if not _number(below) or not math.isfinite(below) or not 0 < below <= 20:
        errors.append(ConfigError("grid.below_max_decades", f"must be a number in (0, 20] (got {below!r:.80})"))
    if len(errors) > n_before or gammas is None or etas is None or seeds is None:
        return None
    return GridSpec(gammas=gammas, etas=etas, seeds=seeds, adaptive=adaptive, below_max_decades=float(below))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        # JSON string escapes are valid TOML basic-string escapes; TOML also forbids a raw DEL.
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


# ----------------------------------------------------------------------------- needs the data folder


# Generated in the worker, never read from the data folder: engine.data.check_data has nothing to check
PROCEDURAL_DATASETS = frozenset({"teacher", "mnist1d"})


def grid_size_error(n_gammas: int, n_etas: int, n_seeds: int, max_cells: int) -> ConfigError | None:
    """The cell limit, counted from the axes' sizes: a 10^7-cell grid is refused before any cell is
    built (every caller checks this first: listing the cells took minutes and gigabytes)."""
    n = n_gammas * n_etas * n_seeds
    if n <= max_cells:
        return None
    return ConfigError(
        "grid",
        f"{n_gammas:,} γ × {n_etas:,} η × {n_seeds:,} seeds = {n:,} cells; at most max_cells={max_cells} "
        "allowed (raise it in settings.toml if you mean it)",
    )


def validate_spec(spec: SweepSpec, settings: Settings) -> list[str]:
    """Checks that need the settings and the data folder. Returns warnings; raises SpecError.

    - the grid has at most settings.max_cells cells;
    - data.path resolves inside the data folder (symlinks included) and the files are readable
      (engine.data.check_data, cheap);
    """
    errors: list[ConfigError] = []
    warnings: list[str] = []
    too_big = grid_size_error(len(spec.grid.gammas), len(spec.grid.etas), len(spec.grid.seeds), settings.max_cells)
    if too_big is not None:
        errors.append(too_big)
    data_ok = True
    if spec.data.path is not None:
        try:
            settings.resolve_data_path(spec.data.path)
        except ValueError as exc:  # SettingsError
            errors.append(ConfigError("data.path", getattr(exc, "message", str(exc))))
            data_ok = False
    # A grid over the limit is refused before torch is imported (seconds on a busy machine): the data
    # check waits until the grid is one that could be queued. A procedural dataset has nothing to
    # check: importing torch for it cost `sweep --wait` seconds before its worker was even started.
    if data_ok and too_big is None and spec.data.dataset not in PROCEDURAL_DATASETS:
        from engine.data import check_data  # lazily: torch import is slow and only needed here

        try:
            train = spec.train
            warnings.extend(
                check_data(spec.data, data_root=settings.data_dir, batch_size=train.batch_size, steps=train.steps)
            )
        except ConfigError as exc:
            errors.append(exc)
    if errors:
        raise SpecError(errors)
    return warnings
