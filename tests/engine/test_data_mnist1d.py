"""The vectorized MNIST-1D generator against the `mnist1d` package's own (slow, per-sample) generator."""

import numpy as np
import pytest
import torch
from mnist1d.data import get_dataset_args, get_templates
from mnist1d.transform import transform
from scipy.ndimage import gaussian_filter

from engine.config import DataConfig
from engine.data import make_stream
from engine.mnist1d import (
    DEFAULT_NORMALIZATION,
    Mnist1dArgs,
    gaussian_smooth,
    measure_normalization,
    normalization,
    sample_raw,
    templates,
    transform_batch,
)


def package_samples(labels: np.ndarray, seed0: int, args=None) -> np.ndarray:
    """The package's transform, one sample at a time, each under np.random.seed(seed0 + i)."""
    args = get_dataset_args() if args is None else args
    tmpl = get_templates()
    out = []
    for i, label in enumerate(labels):
        np.random.seed(seed0 + i)
        x, _ = transform(tmpl["x"][label], tmpl["t"], args)
        out.append(x)
    return np.stack(out)


def test_defaults_and_templates_match_the_package():
    ref = get_dataset_args()
    ours = Mnist1dArgs()
    for name in ("template_len", "scale_coeff", "max_translation", "corr_noise_scale", "iid_noise_scale",
                 "shear_scale", "final_seq_length"):
        assert getattr(ours, name) == getattr(ref, name), name
    assert list(ours.padding) == list(ref.padding)
    np.testing.assert_array_equal(templates(), get_templates()["x"])


def test_smoothing_equals_scipy_gaussian_filter():
    z = np.random.default_rng(0).standard_normal((5, 72))
    ref = np.stack([gaussian_filter(row, 2) for row in z])
    np.testing.assert_allclose(gaussian_smooth(z, 2.0), ref, atol=1e-13)


def test_replaying_the_package_draws_gives_the_package_samples():
    """Same random variates in → the same signal out, to round-off, for every sample."""
    labels = np.random.default_rng(1).integers(0, 10, 600)
    ref = package_samples(labels, seed0=5000)
    draws = {k: [] for k in ("pad", "scale", "shift", "corr", "iid", "shear")}
    for i in range(len(labels)):
        np.random.seed(5000 + i)  # the package's call order inside transform()
        draws["pad"].append(np.random.rand())
        draws["scale"].append(np.random.rand())
        draws["shift"].append(np.random.choice(48))
        draws["corr"].append(np.random.randn(72))
        draws["iid"].append(np.random.randn(72))
        draws["shear"].append(np.random.rand())
    ours = transform_batch(
        labels,
        pad_u=np.array(draws["pad"]),
        scale_u=np.array(draws["scale"]),
        shift=np.array(draws["shift"]),
        corr_z=np.stack(draws["corr"]),
        iid_z=np.stack(draws["iid"]),
        shear_u=np.array(draws["shear"]),
    )
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


def per_class_z(ours_x, ours_y, ref_x, ref_y) -> tuple[float, float]:
    """Largest |z| and mean z² over (class, coordinate) of the mean and the std difference."""
    zs = []
    for c in range(10):
        a, b = ours_x[ours_y == c], ref_x[ref_y == c]
        se_mean = np.sqrt(a.var(0) / len(a) + b.var(0) / len(b))
        zs.append((a.mean(0) - b.mean(0)) / se_mean)
        # std of a sample std ≈ sqrt(Var((x-μ)²)) / (2σ√n): use the empirical fourth moment
        def se_std(v):
            s = v.std(0)
            return np.sqrt(((v - v.mean(0)) ** 2).var(0) / len(v)) / (2 * s)
        zs.append((a.std(0) - b.std(0)) / np.sqrt(se_std(a) ** 2 + se_std(b) ** 2))
    z = np.concatenate(zs)
    return float(np.abs(z).max()), float((z**2).mean())


@pytest.mark.slow
def test_independent_samples_match_the_package_in_distribution():
    """Independent draws (no replay): per-class per-coordinate mean and std agree within sampling error,
    and the same statistic rejects a generator with one transform changed."""
    labels = np.repeat(np.arange(10), 300)
    ref = package_samples(labels, seed0=10_000)  # (3000, 40), ~2 s
    rng = np.random.default_rng(7)
    ours, ours_y = sample_raw(rng, 60_000)
    zmax, z2 = per_class_z(ours, ours_y, ref, labels)
    assert zmax < 5.0 and z2 < 1.5, (zmax, z2)
    for broken in (Mnist1dArgs(shear_scale=0.0), Mnist1dArgs(max_translation=24), Mnist1dArgs(corr_noise_scale=0.1)):
        bad, bad_y = sample_raw(np.random.default_rng(7), 60_000, broken)
        zmax_b, z2_b = per_class_z(bad, bad_y, ref, labels)
        assert zmax_b > 6.0 or z2_b > 3.0, (broken, zmax_b, z2_b)


def test_stream_is_standardized_deterministic_and_one_hot():
    cfg = DataConfig(dataset="mnist1d", test_size=200, data_seed=3)
    s = make_stream(cfg, batch_size=64, dtype=torch.float64)
    assert s.input_shape == (40,) and s.n_outputs == 10
    b = s.next_batch()
    assert b.x.shape == (64, 40) and b.target.shape == (64, 10) and b.label.dtype == torch.long
    assert torch.equal(b.target, torch.nn.functional.one_hot(b.label, 10).double())
    again = make_stream(cfg, batch_size=32, dtype=torch.float64)
    assert torch.equal(torch.cat([again.next_batch().x, again.next_batch().x]), b.x)
    assert not torch.equal(s.next_batch().x, b.x)  # fresh
    many = torch.cat([s.next_batch().x for _ in range(40)])
    assert abs(many.mean().item()) < 0.02 and abs(many.std().item() - 1) < 0.02
    assert s.test_set().x.shape == (200, 40)
    assert not torch.isin(s.test_set().x[:, 0], many[:, 0]).any()


def test_kept_default_normalization_is_the_measured_one():
    # a stale constant would silently shift every MNIST-1D input: it must equal the measurement
    assert DEFAULT_NORMALIZATION == pytest.approx(measure_normalization(), rel=1e-12, abs=0)
    assert normalization() == DEFAULT_NORMALIZATION
    other = Mnist1dArgs(scale_coeff=0.8)
    assert normalization(other) == measure_normalization(other) != DEFAULT_NORMALIZATION


def test_normalization_is_that_of_the_package_dataset():
    """The package standardizes by its dataset's scalar mean/std; ours are the same two numbers."""
    mean, std = normalization()
    labels = np.repeat(np.arange(10), 100)
    ref = package_samples(labels, seed0=77)
    assert abs(ref.mean() - mean) < 0.01 and abs(ref.std() / std - 1) < 0.03
