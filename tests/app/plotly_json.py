"""Read arrays back from Plotly figure JSON (plotly >= 6 writes numpy arrays as base64 typed arrays)."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np


def arr(value: Any) -> np.ndarray:
    """A trace attribute as a float array, whether it is a list or {'dtype', 'bdata', 'shape'}."""
    if isinstance(value, dict) and "bdata" in value:
        out = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        if "shape" in value:
            out = out.reshape([int(s) for s in str(value["shape"]).split(",")])
        return out.astype(np.float64)
    return np.array(value, dtype=np.float64)
