"""The base of every dataset module: the Batch and HostChunk records, the DataStream that turns
host chunks into device batches, the stream ids and chunk sizing, and DataError. engine.data (the
dispatcher: make_stream, check_data) and each dataset module import it; it imports none of them.
The design is described in engine.data's docstring.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from engine.config import ConfigError

log = logging.getLogger(__name__)

# Stream ids inside one data_seed: each gets its own SeedSequence branch.
TRAIN_STREAM, TEST_STREAM, PROBE_STREAM, TEACHER_WEIGHTS, TEACHER_CALIBRATION = 0, 1, 2, 3, 4

# A host chunk holds about this many input elements (16 MB in float64): many batches per transfer.
CHUNK_ELEMENTS = 1 << 21
MIN_CHUNK_SAMPLES, MAX_CHUNK_SAMPLES = 256, 1 << 16



class DataError(ConfigError):
    """The data cannot be read or does not fit the config; `field` is 'data.path' or 'data.dataset'."""


@dataclass(frozen=True)
class Batch:
    """x: (B, *input_shape) float; target: (B, n_outputs) float; label: (B,) long."""

    x: torch.Tensor
    target: torch.Tensor
    label: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass
class HostChunk:
    """Samples on the host, before the device transfer.

    x: (n, ...) in the source's dtype (uint8 images stay uint8 until they reach the device);
    label: (n,) int64; target: (n, n_outputs) float64, or None for class data (one-hot built on device).
    """

    x: np.ndarray
    label: np.ndarray
    target: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])


def chunk_samples_for(sample_numel: int) -> int:
    """Samples per host chunk: a fixed element budget, so the chunking depends only on the data shape."""
    return int(min(MAX_CHUNK_SAMPLES, max(MIN_CHUNK_SAMPLES, CHUNK_ELEMENTS // max(1, sample_numel))))


def seeded_rng(data_seed: int, stream: int, chunk: int = 0, part: int = 0) -> np.random.Generator:
    """An independent generator per (data_seed, stream, chunk, part): reproducible on any machine."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([data_seed, stream, chunk, part])))


class DataStream:
    """An endless sequence of batches on one device and dtype.

    Subclasses implement `_next_train_chunk()` (the next host chunk of the training sequence),
    `_held_out(n, stream)` (n samples of the held-out distribution) and optionally `_finish_x`
    (device-side conversion of x to the float dtype, e.g. uint8 → [0, 1]).
    """

    def __init__(
        self,
        *,
        input_shape: tuple[int, ...],
        n_outputs: int,
        batch_size: int,
        test_size: int,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError("train.batch_size", f"must be an integer >= 1 (got {batch_size!r})")
        if dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            raise ConfigError("train.dtype", f"must be a floating dtype (got {dtype})")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.n_outputs = int(n_outputs)
        self.batch_size = batch_size
        self.test_size = test_size
        self.device = torch.device(device)
        self.dtype = dtype
        self.reused = False
        self._buffer: Batch | None = None  # current device chunk
        self._offset = 0  # rows of _buffer already handed out
        self._test: Batch | None = None
        self._probes: dict[int, Batch] = {}

    # -- subclass hooks

    def _next_train_chunk(self) -> HostChunk:
        raise NotImplementedError

    def _held_out(self, n: int, stream: int) -> HostChunk:
        raise NotImplementedError

    def _finish_x(self, x: torch.Tensor) -> torch.Tensor:
        """x on the device, any dtype → (n, *input_shape) in self.dtype."""
        return x.to(self.dtype)

    def _mark_reused(self, message: str) -> None:
        """Called by finite streams when they wrap around: flag it and log once."""
        if not self.reused:
            self.reused = True
            log.warning(message)

    # -- public API

    def to_device(self, chunk: HostChunk) -> Batch:
        """Move a host chunk to the device in one transfer per array and finish it there."""
        non_blocking = self.device.type == "cuda"
        x = torch.from_numpy(np.ascontiguousarray(chunk.x))
        label = torch.from_numpy(np.ascontiguousarray(chunk.label, dtype=np.int64))
        if non_blocking:
            x, label = x.pin_memory(), label.pin_memory()
        x = self._finish_x(x.to(self.device, non_blocking=non_blocking))
        label = label.to(self.device, non_blocking=non_blocking)
        if chunk.target is not None:
            target = torch.from_numpy(np.ascontiguousarray(chunk.target)).to(self.device).to(self.dtype)
        else:
            target = torch.nn.functional.one_hot(label, self.n_outputs).to(self.dtype)  # (n, n_outputs)
        return Batch(x=x, target=target, label=label)

    def next_batch(self) -> Batch:
        """The next `batch_size` samples of the training sequence (never seen before unless `.reused`)."""
        parts: list[Batch] = []
        need = self.batch_size
        while need > 0:
            if self._buffer is None or self._offset >= len(self._buffer):
                self._buffer, self._offset = self.to_device(self._next_train_chunk()), 0
            take = min(need, len(self._buffer) - self._offset)
            lo, hi = self._offset, self._offset + take
            parts.append(Batch(self._buffer.x[lo:hi], self._buffer.target[lo:hi], self._buffer.label[lo:hi]))
            self._offset += take
            need -= take
        if len(parts) == 1:
            return parts[0]
        return Batch(
            x=torch.cat([p.x for p in parts]),
            target=torch.cat([p.target for p in parts]),
            label=torch.cat([p.label for p in parts]),
        )

    def test_set(self) -> Batch:
        """The fixed held-out set (`test_size` samples), the same object on every call."""
        if self._test is None:
            self._test = self.to_device(self._held_out(self.test_size, TEST_STREAM))
        return self._test

    def probe(self, n: int) -> Batch:
        """A fixed batch of n samples from the held-out distribution (same n → same batch)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError("train.probe_size", f"must be an integer >= 1 (got {n!r})")
        if n not in self._probes:
            self._probes[n] = self.to_device(self._held_out(n, PROBE_STREAM))
        return self._probes[n]


# ----------------------------------------------------------------------------- teacher
