"""The view's state in the URL: a copied link opens the same view for a colleague.

Each page declares a schema of its query parameters (name -> Field). `read_view` turns whatever is
in the URL into typed values, falling back to the default for anything malformed (a hand-edited
or stale link must never crash a page); `write_view` gives back the parameters to put in the URL,
leaving out values equal to their defaults so links stay short.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

LIST_SEPARATOR = ","


@dataclass(frozen=True)
class Field:
    """kind: str | int | float | bool | list (a comma-separated list of strings)."""

    kind: str
    default: Any
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None

    def parse(self, raw: Any) -> Any:
        if isinstance(raw, list):  # st.query_params can hold repeated keys; the last one wins
            raw = raw[-1] if raw else None
        if raw is None:
            return self.default
        text = str(raw)
        try:
            value: Any
            if self.kind == "str":
                value = text
            elif self.kind == "int":
                value = int(text)
            elif self.kind == "float":
                value = float(text)
                if not math.isfinite(value):
                    return self.default
            elif self.kind == "bool":
                if text.lower() not in ("1", "0", "true", "false"):
                    return self.default
                value = text.lower() in ("1", "true")
            elif self.kind == "list":
                value = [part for part in text.split(LIST_SEPARATOR) if part]
            else:
                raise ValueError(f"Field.kind: unknown kind {self.kind!r}")
        except ValueError:
            return self.default
        if self.choices is not None and self.kind != "list" and value not in self.choices:
            return self.default
        if self.choices is not None and self.kind == "list":
            value = [v for v in value if v in self.choices]
        if self.minimum is not None and isinstance(value, int | float) and value < self.minimum:
            return self.default
        if self.maximum is not None and isinstance(value, int | float) and value > self.maximum:
            return self.default
        return value

    def format(self, value: Any) -> str:
        if self.kind == "bool":
            return "1" if value else "0"
        if self.kind == "list":
            return LIST_SEPARATOR.join(str(v) for v in value)
        if self.kind == "float":
            return repr(float(value))
        return str(value)


def read_view(params: Mapping[str, Any], schema: Mapping[str, Field]) -> dict[str, Any]:
    """Typed values for every key of `schema` from URL parameters (defaults where absent or bad)."""
    return {name: spec.parse(params.get(name)) for name, spec in schema.items()}


def write_view(values: Mapping[str, Any], schema: Mapping[str, Field]) -> dict[str, str]:
    """URL parameters for `values`, omitting defaults and keys not in the schema."""
    out: dict[str, str] = {}
    for name, spec in schema.items():
        if name not in values or values[name] is None:
            continue
        if values[name] == spec.default:
            continue
        out[name] = spec.format(values[name])
    return out
