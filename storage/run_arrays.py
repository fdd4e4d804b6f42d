"""Small per-run arrays (the final-function snapshot of engine.function_probe) on the bus and in the store.

On the bus a `finished` event may carry `"arrays": {name: {"shape": [..], "data": base64}}`: float32
little-endian bytes, row-major, base64 in the JSON text (one P×P Gram of 256² floats is 349 KB of
text). validate() refuses a malformed entry (bad name, shape, length) with the reason, so the
recorder sets the event aside like any other malformed one.

In DuckDB, table run_arrays (run_key, attempt, name, shape, data) holds one row per (run, attempt,
name), written by the recorder in the same order as points (ingest, commit, registry, ack) and
exactly once: the primary key makes a replayed event's insert a no-op.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

MAX_ELEMENTS = 1 << 22  # 16 MiB of float32 per array: far above a 256² Gram, far below a broker's limit
MAX_DIMS = 4
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_DTYPE = np.dtype("<f4")
DDL = ("CREATE TABLE IF NOT EXISTS run_arrays (run_key INTEGER NOT NULL, attempt INTEGER NOT NULL, "
       "name VARCHAR NOT NULL, shape INTEGER[] NOT NULL, data BLOB NOT NULL, PRIMARY KEY (run_key, attempt, name))")


def encode(arrays: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """{name: array} → the event's JSON-safe form (float32 little-endian, base64)."""
    out = {}
    for name, arr in arrays.items():
        a = np.ascontiguousarray(np.asarray(arr, dtype=_DTYPE))
        out[str(name)] = {"shape": [int(s) for s in a.shape], "data": base64.b64encode(a.tobytes()).decode("ascii")}
    return out


def _raw(name: Any, entry: Any) -> tuple[list[int], bytes]:
    """(shape, bytes) of one encoded entry; ValueError naming what is wrong."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"name must be 1-64 letters, digits, _ . or - (got {name!r})")
    if not isinstance(entry, dict) or set(entry) != {"shape", "data"}:
        raise ValueError(f"{name}: must be an object with exactly shape and data")
    shape, data = entry["shape"], entry["data"]
    if not (isinstance(shape, list) and len(shape) <= MAX_DIMS
            and all(type(s) is int and s >= 0 for s in shape)):
        raise ValueError(f"{name}: shape must be a list of at most {MAX_DIMS} integers >= 0 (got {shape!r})")
    size = math.prod(shape)
    if size > MAX_ELEMENTS:
        raise ValueError(f"{name}: {size} elements, more than the {MAX_ELEMENTS} allowed")
    if not isinstance(data, str):
        raise ValueError(f"{name}: data must be a base64 string")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{name}: data is not valid base64") from None
    if len(raw) != size * _DTYPE.itemsize:
        raise ValueError(f"{name}: {len(raw)} bytes of data for shape {shape} (float32 needs {size * _DTYPE.itemsize})")
    return shape, raw


def validate(arrays: Any) -> None:
    """Check an event's `arrays` field; ValueError with the reason."""
    if not isinstance(arrays, dict):
        raise ValueError(f"must be an object of named arrays (got {type(arrays).__name__})")
    for name, entry in arrays.items():
        _raw(name, entry)


def rows(arrays: Mapping[str, Any]) -> list[tuple[str, list[int], bytes]]:
    """(name, shape, bytes) of each entry of a validated `arrays` field, for the store."""
    return [(name, *_raw(name, entry)) for name, entry in arrays.items()]


def to_array(shape: list[int], data: bytes) -> np.ndarray:
    """A stored row back as a float32 numpy array of its shape (a copy: writable, owns its memory)."""
    return np.frombuffer(data, dtype=_DTYPE).reshape(shape).astype(np.float32)


def decode(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The event's `arrays` field as numpy arrays."""
    return {name: to_array(shape, raw) for name, shape, raw in rows(arrays)}
