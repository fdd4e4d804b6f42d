"""The Launch form <-> the sweep spec dict (the TOML shape that `tasks.spec.SweepSpec.from_dict` reads).

γ and η are typed as text: a list ("0.1, 1, 10") or a log range ("1e-4 .. 10 / 2" = from, to, values
per decade). A value the form cannot read is reported at its field like any other spec error.
"""

from __future__ import annotations

import re
from typing import Any

from engine.config import ConfigError

# Every scalar field of a sweep spec that the form edits, with its default and type. Advanced ones
# sit in an expander; all of them round-trip, so clone-and-edit never drops a setting.
SCALAR_FIELDS: dict[str, tuple[Any, type]] = {
    "model.arch": ("mlp", str), "model.width": (128, int), "model.depth": (3, int),
    "model.activation": ("relu", str), "model.centered": (True, bool), "model.patch": (4, int),
    "model.heads": (2, int),
    "data.dataset": ("mnist1d", str), "data.input_dim": (32, int), "data.image_size": (0, int),
    "data.channels": (1, int), "data.n_classes": (10, int), "data.noise": (0.0, float),
    "data.test_size": (1000, int), "data.data_seed": (0, int),
    "train.loss": ("mse", str), "train.batch_size": (128, int), "train.steps": (1000, int),
    "train.dtype": ("auto", str), "train.eval_points": (30, int), "train.divergence_factor": (1e3, float),
    "train.probe_size": (128, int), "train.optimizer": ("sgd", str), "train.eval_budget": (0.5, float),
    "grid.adaptive": (False, bool), "grid.below_max_decades": (3.0, float),
}
FORM_FIELDS = ("name", *SCALAR_FIELDS, "data.path", "train.metrics", "grid.gamma", "grid.eta", "grid.seeds")
DEFAULT_METRICS = ["test", "alignment", "sharpness", "movement"]

def _exact(v: float) -> str:
    """Short form when it reads back as the same float, else every digit: a cloned grid must keep
    its run identities (the content hash sees every bit of γ and η)."""
    short = f"{v:g}"
    return short if float(short) == v else repr(v)


def format_axis(value: Any) -> str:
    """Spec axis (list, number or {from, to, per_decade}) -> form text."""
    if isinstance(value, dict):
        return f"{value.get('from')} .. {value.get('to')} / {value.get('per_decade')}"
    if isinstance(value, list | tuple):
        return ", ".join(_exact(float(v)) for v in value)
    return f"{value}"


def parse_axis(field: str, text: str) -> Any:
    """Form text -> spec axis value. Raises ConfigError naming `field` for text it cannot read."""
    text = text.strip()
    if not text:
        raise ConfigError(field, "must not be empty: a list like 0.1, 1, 10 or a log range like 1e-4 .. 10 / 2")
    try:
        if ".." in text:
            lo, rest = text.split("..", 1)
            hi, per = rest.split("/", 1) if "/" in rest else (rest, "1")
            return {"from": float(lo), "to": float(hi), "per_decade": float(per)}
        return [float(part) for part in re.split(r"[,\s]+", text) if part]
    except ValueError:
        raise ConfigError(field, f"cannot read {text!r}: give numbers like 0.1, 1, 10 or a log range "
                                 "like 1e-4 .. 10 / 2 (from .. to / per decade)") from None


def parse_seeds(text: str) -> Any:
    text = text.strip()
    try:
        return [int(part) for part in re.split(r"[,\s]+", text) if part]
    except ValueError:
        raise ConfigError("grid.seeds", f"cannot read {text!r}: give whole numbers like 0, 1, 2") from None


def spec_to_form(spec: dict[str, Any]) -> dict[str, Any]:
    """Flatten a spec dict into form values keyed by the dotted field names."""
    sections = {k: spec.get(k) or {} for k in ("model", "data", "train", "grid")}
    form: dict[str, Any] = {"name": spec.get("name", "sweep")}
    for name, (default, kind) in SCALAR_FIELDS.items():
        section, key = name.split(".")
        form[name] = kind(sections[section].get(key, default))
    grid = sections["grid"]
    seeds = grid.get("seeds", [0])
    form.update({
        "data.path": sections["data"].get("path") or "",
        "train.metrics": list(sections["train"].get("metrics", DEFAULT_METRICS)),
        "grid.gamma": format_axis(grid.get("gamma", [1.0])), "grid.eta": format_axis(grid.get("eta", [0.1])),
        "grid.seeds": ", ".join(str(s) for s in (seeds if isinstance(seeds, list) else range(int(seeds)))),
    })
    return form


def form_to_spec(values: dict[str, Any]) -> tuple[dict[str, Any], list[ConfigError]]:
    """Form values -> spec dict, plus the errors of fields the form itself could not read."""
    errors: list[ConfigError] = []
    spec: dict[str, Any] = {"name": values["name"], "model": {}, "data": {}, "train": {}, "grid": {}}
    for name, (default, kind) in SCALAR_FIELDS.items():
        section, key = name.split(".")
        spec[section][key] = kind(values.get(name, default))
    for key, parser in (("gamma", lambda t: parse_axis("grid.gamma", t)),
                        ("eta", lambda t: parse_axis("grid.eta", t)), ("seeds", parse_seeds)):
        try:
            spec["grid"][key] = parser(str(values.get(f"grid.{key}", "")))
        except ConfigError as exc:
            errors.append(exc)
    if str(values.get("data.path") or "").strip():
        spec["data"]["path"] = str(values["data.path"]).strip()
    spec["train"]["metrics"] = list(values.get("train.metrics", DEFAULT_METRICS))
    return spec, errors


# Stand-ins for grid fields the form could not read, so that every other field is still checked.
_PLACEHOLDERS = {"grid.gamma": [1.0], "grid.eta": [0.1], "grid.seeds": [0]}


def check_form(values: dict[str, Any], max_cells: int | None = None) -> tuple[Any, list[ConfigError]]:
    """Form values -> (SweepSpec or None, every problem found). A γ/η/seeds text the form cannot read
    no longer hides the other fields' problems (a user fixed the empty η list, pressed Launch again
    and only then learnt that γ = -1 is refused): the unreadable fields are replaced by stand-ins for
    the spec's own checks, whose errors on those fields are dropped. The spec is None when anything
    is wrong; a spec built on stand-ins is never returned. `max_cells` (settings.max_cells): a grid
    larger than this is refused at `grid`, counted from the axes' sizes before any cell is listed."""
    from tasks.spec import SpecError, SweepSpec, grid_size_error

    spec_dict, errors = form_to_spec(values)
    unread = {e.field for e in errors}
    for name in unread & set(_PLACEHOLDERS):
        spec_dict["grid"][name.split(".")[1]] = _PLACEHOLDERS[name]
    spec = None
    try:
        spec = SweepSpec.from_dict(spec_dict)
    except SpecError as exc:
        errors += [e for e in exc.errors if not any(e.field == f or e.field.startswith(f + ".") for f in unread)]
    except ConfigError as exc:
        if exc.field not in unread:
            errors.append(exc)
    if spec is not None and max_cells is not None:
        g = spec.grid
        too_big = grid_size_error(len(g.gammas), len(g.etas), len(g.seeds), max_cells)
        errors += [too_big] if too_big is not None else []
    return (None if errors else spec), errors


def errors_by_field(errors: list[ConfigError]) -> dict[str, list[str]]:
    """Group errors under the form field they belong to ('grid.eta.from' -> 'grid.eta'); errors of
    fields without a widget go under 'spec' (shown at the top of the form)."""
    out: dict[str, list[str]] = {}
    for e in errors:
        target = next((f for f in FORM_FIELDS if e.field == f or e.field.startswith(f + ".")), "spec")
        out.setdefault(target, []).append(e.message if target != "spec" else f"{e.field}: {e.message}")
    return out
