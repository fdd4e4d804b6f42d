"""A sweep spec (the dict `SweepSpec.to_dict` gives, as stored in the registry) written back as the TOML
file a user would write: what the Runs page shows read-only, with a copy button, to rerun it elsewhere
(`gamma-lab sweep FILE`). The standard library reads TOML but does not write it; specs are small and
regular (scalars, lists of scalars, one level of tables, inline tables for grid axes)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a TOML basic string: the same escapes
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"spec: cannot write {type(v).__name__} values as TOML ({v!r})")


def _key(k: str) -> str:
    return k if k and all(c.isalnum() or c in "_-" for c in k) else json.dumps(k, ensure_ascii=False)


def spec_to_toml(spec: Mapping[str, Any]) -> str:
    """Top-level values first, then one [table] per nested mapping (deeper mappings inline). None
    values are left out (TOML has no null; the spec's defaults fill them in)."""
    lines = [f"{_key(k)} = {_value(v)}" for k, v in spec.items() if v is not None and not isinstance(v, Mapping)]
    for name, table in spec.items():
        if isinstance(table, Mapping):
            lines += ["", f"[{_key(name)}]"]
            lines += [f"{_key(k)} = {_value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"
