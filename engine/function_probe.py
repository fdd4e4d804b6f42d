"""A snapshot of each run's final function, for comparing runs with each other (preset `same-function`).

When a run asks for the metric "function" (train.metrics), the trainer evaluates, after the last
update, every member that trained to the end on a fixed probe set: the first P = min(test_size,
PROBE_MAX) inputs of the stream's test set, the same inputs for every run of the same data config.
It keeps two arrays per run (float32, independent of the width N):

- `output`: f(x) on the probe, (P, C): what the run computes (centered, divided by γ, as trained);
- `gram`: the centered Gram matrix H Φ Φᵀ H of the last-layer features Φ = φ(h_L), (P, P), H = I − 11ᵀ/P.

Linear CKA needs only these Grams: CKA(Φ_a, Φ_b) = ⟨K_a, K_b⟩_F / (‖K_a‖_F ‖K_b‖_F) with K = HΦΦᵀH
(Kornblith et al. 2019), so two runs of different widths compare as well as two of the same width.
CKA is invariant to an orthogonal transform and to the scale of the features, which is why it fits
nets whose feature scale differs with γ.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from engine.models import EnsembleModel, Params

PROBE_MAX = 256  # P: the Gram matrix is P² floats per run (256 KiB at 256)
ARRAY_NAMES = ("output", "gram")


def probe_size(test_size: int) -> int:
    """P for a test set of `test_size` samples."""
    return min(int(test_size), PROBE_MAX)


def centered_gram(features: Tensor) -> Tensor:
    """H Φ Φᵀ H for features Φ (..., P, F) → (..., P, P). H is idempotent, so H Φ Φᵀ H = (HΦ)(HΦ)ᵀ:
    centering the features over the P samples costs P·F instead of P² twice."""
    phi = features - features.mean(dim=-2, keepdim=True)
    return phi @ phi.transpose(-1, -2)


def center(kernel: np.ndarray) -> np.ndarray:
    """H K H of a (P, P) kernel (subtract row and column means, add back the grand mean)."""
    k = np.asarray(kernel, dtype=np.float64)
    return k - k.mean(axis=0, keepdims=True) - k.mean(axis=1, keepdims=True) + k.mean()


def linear_cka(gram_a: np.ndarray, gram_b: np.ndarray) -> float:
    """Linear CKA of two (P, P) feature Gram matrices, centered here (centering twice changes nothing,
    so stored centered Grams and raw ΦΦᵀ both work). 1 for the same representation up to rotation and
    scale; NaN when a representation is constant over the probe (a zero centered Gram)."""
    a, b = center(gram_a), center(gram_b)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"linear_cka: need two (P, P) matrices of one shape (got {a.shape} and {b.shape})")
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.sum(a * b) / denom) if denom > 0 else float("nan")


def output_distance(f_a: np.ndarray, f_b: np.ndarray) -> float:
    """Relative L2 distance of two functions on the probe, (P, C) each:
    ‖f_a − f_b‖_F / sqrt((‖f_a‖_F² + ‖f_b‖_F²)/2). 0 for the same function; about √2 for two
    unrelated functions of equal norm; symmetric in a and b."""
    a, b = np.asarray(f_a, dtype=np.float64), np.asarray(f_b, dtype=np.float64)
    scale = float(np.sqrt(0.5 * (np.sum(a * a) + np.sum(b * b))))
    return float(np.linalg.norm(a - b) / scale) if scale > 0 else float("nan")


def argmax_agreement(f_a: np.ndarray, f_b: np.ndarray) -> float:
    """Fraction of probe inputs where two functions (P, C) pick the same class; with one output
    (C = 1) the same sign."""
    a, b = np.asarray(f_a), np.asarray(f_b)
    if a.shape[-1] == 1:
        return float(np.mean(np.sign(a[:, 0]) == np.sign(b[:, 0])))
    return float(np.mean(np.argmax(a, axis=-1) == np.argmax(b, axis=-1)))


@torch.no_grad()
def snapshot(output: Tensor, features: Tensor) -> list[dict[str, np.ndarray]]:
    """Per member the arrays kept: output (K, P, C) and last-layer features (K, P, F) →
    [{"output": (P, C), "gram": (P, P)}] * K, float32 on the host."""
    grams = centered_gram(features.double()).float().cpu().numpy()  # (K, P, P), in float64 then cast
    outs = output.float().cpu().numpy()  # (K, P, C)
    return [{"output": np.ascontiguousarray(outs[i]), "gram": np.ascontiguousarray(grams[i])}
            for i in range(outs.shape[0])]


@torch.no_grad()
def final_snapshots(model: EnsembleModel, params: Params, theta0: Params | None, gamma: Tensor,
                    members: np.ndarray, alive: np.ndarray, test_x: Tensor) -> dict[int, dict[str, np.ndarray]]:
    """The snapshot of every member still training (alive, by original member), after the last update.
    members: the original member at each position of the (possibly compacted) ensemble; test_x: the
    stream's test inputs, of which the first probe_size are used. → {original member: arrays}."""
    x = test_x[: probe_size(test_x.shape[0])]
    snaps = snapshot(model.output(params, theta0, x, gamma), model.features(params, x))
    return {int(m): snaps[pos] for pos, m in enumerate(members.tolist()) if alive[m]}
