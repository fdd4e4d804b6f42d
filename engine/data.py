"""Online data streams: every `next_batch()` is a batch never seen before (finite sets wrap, and say so).

    stream = make_stream(cfg.data, batch_size=128, device="cuda", dtype=torch.float32)
    batch = stream.next_batch()          # Batch(x (B, *input_shape), target (B, n_outputs), label (B,))
    test = stream.test_set()             # fixed held-out set, same distribution, never in the stream
    probe = stream.probe(128)            # fixed probe batch from the held-out distribution

Design (why it looks like this):
- Samples are produced on the host in *chunks* of many batches (a few MB each) and moved to the
  device one chunk at a time, so neither generation nor host-to-device transfer costs a step.
  Batches are row slices of the device chunk.
- Procedural streams (teacher, mnist1d) seed chunk c of stream s from SeedSequence([data_seed, s, c])
  and the chunk size depends only on the DataConfig, so sample i of the stream is the same whatever
  the batch size, device or dtype. Training, test and probe use different stream ids: they never
  share randomness.
- Class datasets ship labels only; the one-hot {0,1} target is built on the device.

Datasets live in: this module (`teacher`), `engine.mnist1d`, `engine.data_digits` (`digits`) and
`engine.data_files` (`cifar5m`, `mnist1m`, `npz`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.config import ConfigError, DataConfig

log = logging.getLogger(__name__)

# Stream ids inside one data_seed: each gets its own SeedSequence branch.
TRAIN_STREAM, TEST_STREAM, PROBE_STREAM, TEACHER_WEIGHTS, TEACHER_CALIBRATION = 0, 1, 2, 3, 4

# A host chunk holds about this many input elements (16 MB in float64): many batches per transfer.
CHUNK_ELEMENTS = 1 << 21
MIN_CHUNK_SAMPLES, MAX_CHUNK_SAMPLES = 256, 1 << 16

TEACHER_HIDDEN = 64  # hidden width of the random teacher network
CALIBRATION_SAMPLES = 1 << 16  # samples used to normalize the teacher's outputs to unit variance


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


class TeacherStream(DataStream):
    """Gaussian inputs labelled by a fixed random 2-layer tanh network (unlimited, no files).

    x ~ N(0, I) of shape (input_dim,) or (channels, image_size, image_size) when image_size > 0.
    teacher(x) = W2 tanh(W1 x / sqrt(D)) / sqrt(H), W ~ N(0, 1), H = TEACHER_HIDDEN, then shifted and
    scaled per output to zero mean and unit variance (measured once on CALIBRATION_SAMPLES inputs).
    target = teacher(x) + noise · N(0, 1); label = argmax(target). The held-out set and probes carry the
    same label noise: they are the same distribution as the stream.
    """

    def __init__(
        self,
        cfg: DataConfig,
        *,
        batch_size: int,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        shape = (cfg.channels, cfg.image_size, cfg.image_size) if cfg.image_size > 0 else (cfg.input_dim,)
        super().__init__(
            input_shape=shape,
            n_outputs=cfg.n_classes,
            batch_size=batch_size,
            test_size=cfg.test_size,
            device=device,
            dtype=dtype,
        )
        self.cfg = cfg
        self.input_numel = int(np.prod(shape))
        self.chunk_samples = chunk_samples_for(self.input_numel)
        weights = seeded_rng(cfg.data_seed, TEACHER_WEIGHTS)
        self.w1 = weights.standard_normal((self.input_numel, TEACHER_HIDDEN))  # (D, H)
        self.w2 = weights.standard_normal((TEACHER_HIDDEN, cfg.n_classes))  # (H, C)
        # Calibrate on exact samples of the hidden pre-activations: for x ~ N(0, I), W1ᵀx/√D ~ N(0, Σ) with
        # Σ = W1ᵀW1/D (H, H), so sampling z Σ^½ costs H² per sample instead of D·H for large inputs.
        cov = self.w1.T @ self.w1 / self.input_numel  # (H, H)
        eigval, eigvec = np.linalg.eigh(cov)
        root = eigvec * np.sqrt(np.clip(eigval, 0.0, None))  # (H, H), root @ root.T = Σ
        z = seeded_rng(cfg.data_seed, TEACHER_CALIBRATION).standard_normal((CALIBRATION_SAMPLES, TEACHER_HIDDEN))
        raw = np.tanh(z @ root.T) @ self.w2 / np.sqrt(TEACHER_HIDDEN)  # (S, C)
        self.out_mean = raw.mean(axis=0)
        self.out_std = np.maximum(raw.std(axis=0), 1e-12)
        self._chunk_index = 0

    def _raw_teacher(self, x: np.ndarray) -> np.ndarray:
        """x: (n, D) → (n, C) un-normalized teacher outputs."""
        hidden = np.tanh(x @ self.w1 / np.sqrt(self.input_numel))  # (n, H)
        return hidden @ self.w2 / np.sqrt(TEACHER_HIDDEN)

    def teacher(self, x: np.ndarray) -> np.ndarray:
        """The noiseless, normalized teacher: x (n, *input_shape) → (n, n_classes)."""
        return (self._raw_teacher(x.reshape(x.shape[0], -1)) - self.out_mean) / self.out_std

    def _sample(self, n: int, stream: int, chunk: int) -> HostChunk:
        x = seeded_rng(self.cfg.data_seed, stream, chunk, 0).standard_normal((n, self.input_numel))  # (n, D)
        target = self.teacher(x)  # (n, C)
        if self.cfg.noise > 0:
            target = target + self.cfg.noise * seeded_rng(self.cfg.data_seed, stream, chunk, 1).standard_normal(
                target.shape
            )
        return HostChunk(x=x.reshape(n, *self.input_shape), label=target.argmax(axis=1), target=target)

    def _next_train_chunk(self) -> HostChunk:
        chunk = self._sample(self.chunk_samples, TRAIN_STREAM, self._chunk_index)
        self._chunk_index += 1
        return chunk

    def _held_out(self, n: int, stream: int) -> HostChunk:
        return self._sample(n, stream, 0)


# ----------------------------------------------------------------------------- entry points


def make_stream(
    cfg: DataConfig,
    *,
    batch_size: int,
    data_root: Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> DataStream:
    """The online stream a DataConfig describes, delivering batches on `device` in `dtype`."""
    if not isinstance(cfg, DataConfig):
        raise ConfigError("data", f"must be a DataConfig (got {type(cfg).__name__})")
    if cfg.dataset == "teacher":
        return TeacherStream(cfg, batch_size=batch_size, device=device, dtype=dtype)
    if cfg.dataset == "mnist1d":
        from engine.mnist1d import Mnist1dStream  # these modules import this one: import late

        return Mnist1dStream(cfg, batch_size=batch_size, device=device, dtype=dtype)
    if cfg.dataset == "digits":
        from engine.data_digits import make_digits_stream

        return make_digits_stream(cfg, batch_size=batch_size, device=device, dtype=dtype)
    from engine.data_files import OPENERS, make_file_stream

    if cfg.dataset in OPENERS:
        return make_file_stream(cfg, batch_size=batch_size, data_root=data_root, device=device, dtype=dtype)
    raise DataError("data.dataset", f"unknown dataset {cfg.dataset!r}")


def check_data(cfg: DataConfig, *, data_root: Path | None, batch_size: int, steps: int) -> list[str]:
    """Cheap pre-flight check before anything is queued: raises DataError for missing, corrupt or
    ill-shaped data (files are opened and their headers and labels checked, no pixels read);
    returns warnings, e.g. that a finite set would be reused."""
    if not isinstance(cfg, DataConfig):
        raise ConfigError("data", f"must be a DataConfig (got {type(cfg).__name__})")
    if cfg.dataset in ("teacher", "mnist1d"):
        return []  # procedural: nothing to read, never reused
    from engine.data_finite import reuse_warning

    if cfg.dataset == "digits":
        from engine.data_digits import n_train

        name, train_rows = "digits", n_train(cfg)
    else:
        from engine.data_files import open_file_dataset

        opened = open_file_dataset(cfg, data_root)
        name, train_rows = opened.name, len(opened.source) - cfg.test_size
        if train_rows <= 0:
            raise DataError(
                "data.test_size",
                f"{name} has {len(opened.source):,} samples; use test_size < {len(opened.source):,} "
                f"(got {cfg.test_size:,})",
            )
    message = reuse_warning(name, train_rows, batch_size, steps)
    return [message] if message else []
