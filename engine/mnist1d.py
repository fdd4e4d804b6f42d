"""MNIST-1D (Greydanus 2020), generated procedurally and vectorized, so an online run never runs out.

The reference generator (the `mnist1d` package, `mnist1d.transform.transform`) loops in Python over
samples (~1.4k samples/s). This module applies the same templates and the same transforms, with the
same default arguments as `mnist1d.data.get_dataset_args()`, to a whole chunk of samples at once:

    pad with p ~ U{36..60} zeros → stretch to 72 points → scale by 1 + 0.4·(u − ½) → roll by k ~ U{0..47}
    → where the signal is exactly 0 put correlated noise (0.25·N(0,1) smoothed by a σ=2 Gaussian,
    scipy's 'reflect' edges) → add 0.02·N(0,1) → shear by 0.75·(u − ½)·linspace(−½, ½) → resample to 40.

`transform_batch` takes the random variates as arrays, so a test can replay the package's own draws
and compare sample by sample. The package then standardizes its whole dataset by one scalar mean and
std; an endless stream cannot, so we standardize with the mean and std of a fixed calibration sample
(`normalization()`), which is the same map up to the sampling error of a 5,000-sample dataset.
Labels are uniform over the 10 digits (the package balances them exactly; the distribution is the same).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from engine.config import DataConfig
from engine.data_stream import TRAIN_STREAM, DataStream, HostChunk, chunk_samples_for, seeded_rng

N_CLASSES = 10
EPS = 1e-8  # the package adds 1e-8 before padding so the template (which starts and ends at 0) stays nonzero
CALIBRATION_SEED = 20201203  # fixed: the normalization constants must not depend on data_seed


@dataclass(frozen=True)
class Mnist1dArgs:
    """The generator's knobs; the defaults are `mnist1d.data.get_dataset_args()`."""

    template_len: int = 12
    padding: tuple[int, int] = (36, 60)
    scale_coeff: float = 0.4
    max_translation: int = 48
    corr_noise_scale: float = 0.25
    iid_noise_scale: float = 2e-2
    shear_scale: float = 0.75
    final_seq_length: int = 40

    @property
    def stretched_len(self) -> int:
        return self.template_len + self.padding[1]  # 72 with the defaults


def templates() -> np.ndarray:
    """The 10 digit templates, (10, 12), whitened and shifted to start at 0, divided by 6 (as the package)."""
    x = np.asarray(
        [
            [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
            [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
            [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
            [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
            [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
            [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
            [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
            [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
            [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
            [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
        ]
    )
    x -= x.mean(1, keepdims=True)
    x /= x.std(1, keepdims=True)
    x -= x[:, :1]
    return x / 6.0


def _resample(y: np.ndarray, src_len: np.ndarray | int, n_out: int) -> np.ndarray:
    """Linear interpolation of each row from its first `src_len` points on linspace(0, 1, src_len)
    to linspace(0, 1, n_out), as scipy's interp1d does (interval chosen by searchsorted 'left').

    y: (n, L) with L >= max(src_len); src_len: (n,) or int → (n, n_out).
    """
    n = y.shape[0]
    last = np.broadcast_to(np.asarray(src_len) - 1, (n,)).astype(np.float64)[:, None]  # (n, 1)
    pos = np.linspace(0.0, 1.0, n_out)[None, :] * last  # (n, n_out) position in source-index units
    lo = np.clip(np.ceil(pos).astype(np.int64) - 1, 0, last.astype(np.int64) - 1)  # (n, n_out)
    w = pos - lo
    y_lo = np.take_along_axis(y, lo, axis=1)
    y_hi = np.take_along_axis(y, lo + 1, axis=1)
    return y_lo + (y_hi - y_lo) * w


@functools.cache
def _gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage.gaussian_filter1d's weights: radius int(truncate·σ + ½), normalized to sum 1."""
    radius = int(truncate * sigma + 0.5)
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * taps**2 / sigma**2)
    return w / w.sum()


def gaussian_smooth(noise: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Row-wise Gaussian smoothing with scipy's default 'reflect' (half-sample symmetric) edges. (n, L) → (n, L)."""
    w = _gaussian_kernel(sigma)
    radius = len(w) // 2
    padded = np.pad(noise, ((0, 0), (radius, radius)), mode="symmetric")  # (n, L + 2r)
    windows = np.lib.stride_tricks.sliding_window_view(padded, len(w), axis=1)  # (n, L, 2r+1)
    return windows @ w


@functools.cache
def _linear_maps(args: Mnist1dArgs) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every step of `transform` except the noise draws is linear with few distinct shapes, so we
    precompute it once and a chunk costs a gather and two small matmuls:

    dilated (10, P, 72): template c padded with padding[0] + j zeros and stretched to 72 points;
    smooth (72, 72): z @ smooth = Gaussian-smoothed z;  final (72, 40): x @ final = resampled x;
    shear_line (40,): linspace(−½, ½, 72) resampled (shear commutes with the linear resampling).
    """
    t = templates() + EPS  # (10, 12)
    low, high = args.padding
    m = args.stretched_len
    pads = np.arange(low, high + 1)  # (P,)
    padded = np.zeros((len(pads), 10, args.template_len + high))
    padded[:, :, : args.template_len] = t
    src_len = np.repeat(args.template_len + pads, 10)  # (P·10,)
    dilated = _resample(padded.reshape(-1, m), src_len, m).reshape(len(pads), 10, m).transpose(1, 0, 2)
    eye = np.eye(m)
    smooth = gaussian_smooth(eye, 2.0)  # row j: response to a unit impulse at j
    final = _resample(eye, m, args.final_seq_length)  # (72, 40)
    shear_line = np.linspace(-0.5, 0.5, m) @ final  # (40,)
    return np.ascontiguousarray(dilated), smooth, final, shear_line


def transform_batch(
    label: np.ndarray,
    pad_u: np.ndarray,
    scale_u: np.ndarray,
    shift: np.ndarray,
    corr_z: np.ndarray,
    iid_z: np.ndarray,
    shear_u: np.ndarray,
    args: Mnist1dArgs = Mnist1dArgs(),
) -> np.ndarray:
    """The package's `transform` on n samples at once, given its random variates.

    label (n,) digit; pad_u, scale_u, shear_u (n,) uniform [0, 1); shift (n,) int in [0, max_translation);
    corr_z, iid_z (n, 72) standard normal  →  x (n, final_seq_length), before dataset standardization.
    """
    low, high = args.padding
    m = args.stretched_len
    dilated, smooth, final, shear_line = _linear_maps(args)
    pad_index = (pad_u * (high - low + 1)).astype(np.int64)  # (n,) in [0, P): padding[0] + index zeros
    x = dilated[label, pad_index] * (1 + args.scale_coeff * (scale_u - 0.5))[:, None]  # (n, 72)
    # translate: the package's concatenate([x[-k:], x[:-k]]) is a roll right by k (k = 0: unchanged)
    idx = (np.arange(m)[None, :] - shift[:, None]) % m  # (n, 72)
    x = np.take_along_axis(x, idx, axis=1)
    # correlated noise fills the exact zeros (the padding); the eps keeps the template itself nonzero
    x = np.where(x != 0, x, (args.corr_noise_scale * corr_z) @ smooth)
    x = (x + args.iid_noise_scale * iid_z) @ final  # (n, 40)
    return x - (args.shear_scale * (shear_u - 0.5))[:, None] * shear_line[None, :]


def sample_raw(
    rng: np.random.Generator, n: int, args: Mnist1dArgs = Mnist1dArgs()
) -> tuple[np.ndarray, np.ndarray]:
    """n fresh samples, unstandardized: x (n, final_seq_length) float64, label (n,) int64."""
    label = rng.integers(0, N_CLASSES, size=n)
    m = args.stretched_len
    x = transform_batch(
        label,
        pad_u=rng.random(n),
        scale_u=rng.random(n),
        shift=rng.integers(0, args.max_translation, size=n),
        corr_z=rng.standard_normal((n, m)),
        iid_z=rng.standard_normal((n, m)),
        shear_u=rng.random(n),
        args=args,
    )
    return x, label


CALIBRATION_SAMPLES = 1 << 16
# measure_normalization() for the default arguments, kept so that each worker process does not spend
# ~0.7 s re-measuring it; tests/engine/test_data_mnist1d.py checks that it is the measured value.
DEFAULT_NORMALIZATION = (-0.0061478983330445535, 0.15472304622774172)


def measure_normalization(args: Mnist1dArgs = Mnist1dArgs(), samples: int = CALIBRATION_SAMPLES) -> tuple[float, float]:
    """Scalar (mean, std) of the raw samples, measured on a fixed-seed sample (the package
    standardizes its dataset by the same two scalars)."""
    x, _ = sample_raw(np.random.Generator(np.random.PCG64(CALIBRATION_SEED)), samples, args)
    return float(x.mean()), float(x.std())


@functools.cache
def normalization(args: Mnist1dArgs = Mnist1dArgs()) -> tuple[float, float]:
    """measure_normalization(args), once per process (the default arguments' value is kept above)."""
    return DEFAULT_NORMALIZATION if args == Mnist1dArgs() else measure_normalization(args)


class Mnist1dStream(DataStream):
    """Endless MNIST-1D: x (B, 40) standardized, 10 classes, one-hot targets."""

    def __init__(
        self,
        cfg: DataConfig,
        *,
        batch_size: int,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        args: Mnist1dArgs = Mnist1dArgs(),
    ):
        super().__init__(
            input_shape=(args.final_seq_length,),
            n_outputs=N_CLASSES,
            batch_size=batch_size,
            test_size=cfg.test_size,
            device=device,
            dtype=dtype,
        )
        self.cfg = cfg
        self.args = args
        self.mean, self.std = normalization(args)
        self.chunk_samples = chunk_samples_for(args.stretched_len)
        self._chunk_index = 0

    def _sample(self, n: int, stream: int, chunk: int) -> HostChunk:
        x, label = sample_raw(seeded_rng(self.cfg.data_seed, stream, chunk), n, self.args)
        return HostChunk(x=(x - self.mean) / self.std, label=label)

    def _next_train_chunk(self) -> HostChunk:
        chunk = self._sample(self.chunk_samples, TRAIN_STREAM, self._chunk_index)
        self._chunk_index += 1
        return chunk

    def _held_out(self, n: int, stream: int) -> HostChunk:
        return self._sample(n, stream, 0)
