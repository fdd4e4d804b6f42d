"""scikit-learn's bundled 8×8 digits (1,797 images) as a finite stream of (1, 8, 8) images in [0, 1].

The images are put in a random order fixed by data_seed; the last min(test_size, 300) of that order
are held out (capped at 300 so that most of this small set still trains: with the default test_size
1,497 images train). Each pass over the training images uses a fresh shuffle; a run that needs more
samples than that reuses data, and says so (check_data warns, the stream sets `.reused`).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from engine.config import DataConfig
from engine.data_finite import FiniteStream, RowSource, XLayout
from engine.data_stream import DataError

N_CLASSES = 10
PIXEL_MAX = 16.0  # the digits' pixel values are integers 0..16


@functools.cache
def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(x (1797, 1, 8, 8) float64 in [0, 1], y (1797,) int64), read from scikit-learn's bundled copy."""
    try:
        from sklearn.datasets import load_digits  # lazy: engine/ must import without scikit-learn
    except ImportError:
        raise DataError(
            "data.dataset", "dataset 'digits' needs scikit-learn: pip install scikit-learn (or pick another dataset)"
        ) from None
    bunch = load_digits()
    x = np.asarray(bunch.images, dtype=np.float64)[:, None] / PIXEL_MAX  # (1797, 1, 8, 8)
    return x, np.asarray(bunch.target, dtype=np.int64)


def held_out_size(cfg: DataConfig) -> int:
    return cfg.held_out_size


def n_train(cfg: DataConfig) -> int:
    x, _ = load_digits_arrays()
    return len(x) - held_out_size(cfg)


def make_digits_stream(
    cfg: DataConfig, *, batch_size: int, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> FiniteStream:
    x, y = load_digits_arrays()
    order = np.random.Generator(np.random.PCG64(np.random.SeedSequence([cfg.data_seed, 99]))).permutation(len(y))
    return FiniteStream(
        RowSource([(x[order], y[order])]),
        name="digits",
        test_size=held_out_size(cfg),
        input_shape=(1, 8, 8),
        n_outputs=N_CLASSES,
        x_layout=XLayout(layout="nchw"),
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        shuffle_seed=cfg.data_seed,
    )
