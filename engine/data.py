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
They all build on `engine.data_stream` (Batch, HostChunk, DataStream); this module dispatches to them.
"""


from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from engine.config import ConfigError, DataConfig
from engine.data_digits import N_CLASSES as DIGITS_CLASSES
from engine.data_digits import make_digits_stream, n_train
from engine.data_files import OPENERS, make_file_stream, open_file_dataset
from engine.data_finite import reuse_warning
from engine.data_stream import (  # the base every dataset module imports; re-exported here
    CHUNK_ELEMENTS,  # noqa: F401
    MAX_CHUNK_SAMPLES,  # noqa: F401
    MIN_CHUNK_SAMPLES,  # noqa: F401
    PROBE_STREAM,  # noqa: F401
    TEACHER_CALIBRATION,
    TEACHER_WEIGHTS,
    TEST_STREAM,  # noqa: F401
    TRAIN_STREAM,  # noqa: F401
    Batch,  # noqa: F401
    DataError,
    DataStream,
    HostChunk,
    chunk_samples_for,
    seeded_rng,
)
from engine.mnist1d import N_CLASSES as MNIST1D_CLASSES
from engine.mnist1d import Mnist1dStream

log = logging.getLogger(__name__)

TEACHER_HIDDEN = 64  # hidden width of the random teacher network
CALIBRATION_SAMPLES = 1 << 16  # samples used to normalize the teacher's outputs to unit variance


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
        return Mnist1dStream(cfg, batch_size=batch_size, device=device, dtype=dtype)
    if cfg.dataset == "digits":
        return make_digits_stream(cfg, batch_size=batch_size, device=device, dtype=dtype)
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
    if cfg.dataset == "digits":
        name, train_rows = "digits", n_train(cfg)
    else:
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


def n_outputs(cfg: DataConfig) -> int:
    """C, the network's outputs for this data (what the MSE loss averages over): mnist1d and digits
    always have 10 classes; teacher and the file datasets have `n_classes`."""
    if cfg.dataset == "mnist1d":
        return MNIST1D_CLASSES
    if cfg.dataset == "digits":
        return DIGITS_CLASSES
    return cfg.n_classes
