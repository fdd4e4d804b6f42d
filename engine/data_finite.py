"""Finite datasets as online streams: the training rows are consumed once, in order; the held-out rows
(the *last* `test_size` rows of the data) are never in the stream. When a run needs more samples than
there are training rows the stream wraps around, sets `.reused` and logs a warning once;
`reuse_warning` gives the same message to `check_data` before anything is queued.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from engine.config import ConfigError
from engine.data_stream import PROBE_STREAM, DataError, DataStream, HostChunk, chunk_samples_for


class RowSource:
    """Rows of several (X, Y) parts (memory-mapped or in memory) seen as one array, in order."""

    def __init__(self, parts: Sequence[tuple[np.ndarray, np.ndarray]]):
        if not parts:
            raise ValueError("RowSource needs at least one part")
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(y) for _, y in self.parts])  # (P+1,) first row of each part

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def rows(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows [lo, hi) copied out of the parts: x (hi-lo, ...), y (hi-lo,)."""
        xs, ys = [], []
        for i, (x, y) in enumerate(self.parts):
            a, b = max(lo, int(self.offsets[i])), min(hi, int(self.offsets[i + 1]))
            if a < b:
                xs.append(np.asarray(x[a - self.offsets[i] : b - self.offsets[i]]))
                ys.append(np.asarray(y[a - self.offsets[i] : b - self.offsets[i]]))
        return np.concatenate(xs), np.concatenate(ys)

    def take(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows at arbitrary positions (used by shuffled in-memory sets)."""
        part = np.searchsorted(self.offsets, index, side="right") - 1  # (n,) part of each row
        x0, y0 = self.parts[0]
        x = np.empty((len(index), *x0.shape[1:]), dtype=x0.dtype)
        y = np.empty(len(index), dtype=y0.dtype)
        for i, (xp, yp) in enumerate(self.parts):
            sel = part == i
            if sel.any():
                local = index[sel] - self.offsets[i]
                x[sel], y[sel] = xp[local], yp[local]
        return x, y


@dataclass(frozen=True)
class XLayout:
    """How stored x becomes model input on the device.

    layout 'nhwc' images are permuted to (C, H, W); x is multiplied by `scale`, then each channel
    (or every coordinate, for a single mean/std) is standardized when `mean`/`std` are given.
    """

    layout: str = "flat"  # 'flat' (n, D) | 'nchw' | 'nhwc' | 'nhw' (one channel, added here)
    scale: float = 1.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def apply(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.layout == "nhwc":
            x = x.permute(0, 3, 1, 2)  # (n, H, W, C) → (n, C, H, W)
        elif self.layout == "nhw":
            x = x.unsqueeze(1)  # (n, H, W) → (n, 1, H, W)
        x = x.to(dtype)
        if self.scale != 1.0:
            x = x * self.scale
        if self.mean is not None and self.std is not None:
            shape = (1, -1, 1, 1) if x.ndim == 4 else (1, -1)
            mean = torch.tensor(self.mean, dtype=dtype, device=x.device)
            std = torch.tensor(self.std, dtype=dtype, device=x.device)
            if len(self.mean) > 1:
                mean, std = mean.view(shape), std.view(shape)
            x = (x - mean) / std
        return x.contiguous()


def reuse_warning(name: str, n_train: int, batch_size: int, steps: int) -> str | None:
    """The message when steps × batch_size exceeds the training rows, else None."""
    total = steps * batch_size
    if total <= n_train:
        return None
    return (
        f"{steps:,} steps × {batch_size:,} = {total:,} samples but {name} has {n_train:,} training samples: "
        f"data will be reused ~{total / n_train:.0f}×"
    )


class FiniteStream(DataStream):
    """Rows [0, n_train) of `source` are the training sequence; the last `test_size` rows are held out.

    With `shuffle_seed` the training order is a fresh permutation per epoch (for small in-memory sets);
    without, rows are read in stored order (file-backed sets: sequential reads of the memory map).
    """

    def __init__(
        self,
        source: RowSource,
        *,
        name: str,
        test_size: int,
        input_shape: tuple[int, ...],
        n_outputs: int,
        x_layout: XLayout,
        batch_size: int,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        shuffle_seed: int | None = None,
    ):
        if test_size >= len(source):
            raise DataError(
                "data.test_size",
                f"{name} has {len(source):,} samples; the held-out set (the last test_size samples) must leave "
                f"training samples: use test_size < {len(source):,} (got {test_size:,})",
            )
        super().__init__(
            input_shape=input_shape,
            n_outputs=n_outputs,
            batch_size=batch_size,
            test_size=test_size,
            device=device,
            dtype=dtype,
        )
        self.source = source
        self.name = name
        self.n_train = len(source) - test_size
        self.x_layout = x_layout
        self.shuffle_seed = shuffle_seed
        self.chunk_samples = chunk_samples_for(int(np.prod(input_shape)))
        self._cursor = 0  # next training row (within the epoch)
        self._epoch = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray | None:
        if self.shuffle_seed is None:
            return None
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.shuffle_seed, epoch])))
        return rng.permutation(self.n_train)

    def _finish_x(self, x: torch.Tensor) -> torch.Tensor:
        return self.x_layout.apply(x, self.dtype)

    def _next_train_chunk(self) -> HostChunk:
        if self._cursor >= self.n_train:
            self._cursor, self._epoch = 0, self._epoch + 1
            self._order = self._permutation(self._epoch)
            self._mark_reused(
                f"{self.name}: all {self.n_train:,} training samples used; the stream starts over "
                "(data is being reused, so train_loss is no longer a test loss)"
            )
        lo, hi = self._cursor, min(self._cursor + self.chunk_samples, self.n_train)
        self._cursor = hi
        x, y = self.source.rows(lo, hi) if self._order is None else self.source.take(self._order[lo:hi])
        return HostChunk(x=x, label=y.astype(np.int64))

    def _held_out(self, n: int, stream: int) -> HostChunk:
        if stream == PROBE_STREAM and n > self.test_size:
            raise ConfigError(
                "train.probe_size",
                f"the probe is drawn from the {self.test_size:,} held-out samples of {self.name}: "
                f"use probe_size <= {self.test_size:,} or a larger data.test_size (got {n:,})",
            )
        x, y = self.source.rows(self.n_train, self.n_train + n)
        return HostChunk(x=x, label=y.astype(np.int64))
