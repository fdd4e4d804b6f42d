"""The Launch form <-> the sweep spec dict (the TOML shape that `tasks.spec.SweepSpec.from_dict` reads).

γ and η are typed as text: a list ("0.1, 1, 10") or a log range ("1e-4 .. 10 / 2" = from, to, values
per decade). A value the form cannot read is reported at its field like any other spec error.
"""

from __future__ import annotations

import re
from typing import Any

from engine.config import ConfigError

FORM_FIELDS = ("name", "model.arch", "model.width", "model.depth", "model.activation", "model.centered",
               "data.dataset", "data.path", "train.loss", "train.batch_size", "train.steps", "train.dtype",
               "train.eval_points", "train.metrics", "grid.gamma", "grid.eta", "grid.seeds")


def format_axis(value: Any) -> str:
    """Spec axis (list, number or {from, to, per_decade}) -> form text."""
    if isinstance(value, dict):
        return f"{value.get('from')} .. {value.get('to')} / {value.get('per_decade')}"
    if isinstance(value, list | tuple):
        return ", ".join(f"{float(v):g}" for v in value)
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
    model, data, train, grid = (spec.get(k, {}) for k in ("model", "data", "train", "grid"))
    return {
        "name": spec.get("name", "sweep"),
        "model.arch": model.get("arch", "mlp"), "model.width": int(model.get("width", 128)),
        "model.depth": int(model.get("depth", 3)), "model.activation": model.get("activation", "relu"),
        "model.centered": bool(model.get("centered", True)),
        "data.dataset": data.get("dataset", "mnist1d"), "data.path": data.get("path") or "",
        "train.loss": train.get("loss", "mse"), "train.batch_size": int(train.get("batch_size", 128)),
        "train.steps": int(train.get("steps", 1000)), "train.dtype": train.get("dtype", "auto"),
        "train.eval_points": int(train.get("eval_points", 30)),
        "train.metrics": list(train.get("metrics", ["test", "alignment", "sharpness", "movement"])),
        "grid.gamma": format_axis(grid.get("gamma", [1.0])), "grid.eta": format_axis(grid.get("eta", [0.1])),
        "grid.seeds": ", ".join(str(s) for s in (grid.get("seeds", [0]) if isinstance(grid.get("seeds"), list)
                                                  else range(int(grid.get("seeds", 1))))),
    }


def form_to_spec(values: dict[str, Any]) -> tuple[dict[str, Any], list[ConfigError]]:
    """Form values -> spec dict, plus the errors of fields the form itself could not read."""
    errors: list[ConfigError] = []
    grid: dict[str, Any] = {}
    for key, parser in (("gamma", lambda t: parse_axis("grid.gamma", t)),
                        ("eta", lambda t: parse_axis("grid.eta", t)), ("seeds", parse_seeds)):
        try:
            grid[key] = parser(str(values.get(f"grid.{key}", "")))
        except ConfigError as exc:
            errors.append(exc)
    data: dict[str, Any] = {"dataset": values["data.dataset"]}
    if str(values.get("data.path") or "").strip():
        data["path"] = str(values["data.path"]).strip()
    spec = {
        "name": values["name"],
        "model": {"arch": values["model.arch"], "width": int(values["model.width"]),
                  "depth": int(values["model.depth"]), "activation": values["model.activation"],
                  "centered": bool(values["model.centered"])},
        "data": data,
        "train": {"loss": values["train.loss"], "batch_size": int(values["train.batch_size"]),
                  "steps": int(values["train.steps"]), "dtype": values["train.dtype"],
                  "eval_points": int(values["train.eval_points"]), "metrics": list(values["train.metrics"])},
        "grid": grid,
    }
    return spec, errors


def errors_by_field(errors: list[ConfigError]) -> dict[str, list[str]]:
    """Group errors under the form field they belong to ('grid.eta.from' -> 'grid.eta'); errors of
    fields without a widget go under 'spec' (shown at the top of the form)."""
    out: dict[str, list[str]] = {}
    for e in errors:
        target = next((f for f in FORM_FIELDS if e.field == f or e.field.startswith(f + ".")), "spec")
        out.setdefault(target, []).append(e.message if target != "spec" else f"{e.field}: {e.message}")
    return out
