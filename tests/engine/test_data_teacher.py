"""The teacher stream: shapes, determinism, fresh batches, held-out separation, unit-variance targets."""

import numpy as np
import pytest
import torch

from engine.config import ConfigError, DataConfig
from engine.data import Batch, DataError, TeacherStream, make_stream


def teacher(**kw) -> DataConfig:
    return DataConfig(dataset="teacher", **{"input_dim": 8, "n_classes": 3, "test_size": 50, **kw})


def test_shapes_dtypes_and_contract():
    s = make_stream(teacher(), batch_size=16, dtype=torch.float64)
    assert s.input_shape == (8,) and s.n_outputs == 3
    b = s.next_batch()
    assert isinstance(b, Batch)
    assert b.x.shape == (16, 8) and b.target.shape == (16, 3) and b.label.shape == (16,)
    assert b.x.dtype == torch.float64 and b.target.dtype == torch.float64 and b.label.dtype == torch.long
    assert torch.equal(b.label, b.target.argmax(dim=1))
    assert len(s.test_set()) == 50 and len(s.probe(7)) == 7
    assert s.test_set() is s.test_set()  # fixed object
    assert s.reused is False


def test_image_shape():
    s = make_stream(teacher(image_size=5, channels=2), batch_size=4)
    assert s.input_shape == (2, 5, 5)
    assert s.next_batch().x.shape == (4, 2, 5, 5)
    assert s.test_set().x.shape == (50, 2, 5, 5)


def test_deterministic_given_seed_and_independent_of_batch_size():
    a = make_stream(teacher(data_seed=3), batch_size=10, dtype=torch.float64)
    b = make_stream(teacher(data_seed=3), batch_size=25, dtype=torch.float64)
    xa = torch.cat([a.next_batch().x for _ in range(5)])  # 50 samples
    xb = torch.cat([b.next_batch().x for _ in range(2)])  # 50 samples
    assert torch.equal(xa, xb)
    c = make_stream(teacher(data_seed=4), batch_size=10, dtype=torch.float64)
    assert not torch.equal(c.next_batch().x, xa[:10])
    assert torch.equal(a.test_set().target, b.test_set().target)
    assert torch.equal(a.probe(5).x, b.probe(5).x)


def test_float32_stream_is_the_rounded_float64_stream():
    a = make_stream(teacher(), batch_size=10, dtype=torch.float64).next_batch()
    b = make_stream(teacher(), batch_size=10, dtype=torch.float32).next_batch()
    assert torch.equal(a.x.float(), b.x)


def test_batches_are_fresh_across_chunk_boundaries_and_never_in_held_out():
    s = make_stream(teacher(input_dim=4096), batch_size=300, dtype=torch.float64)
    assert s.chunk_samples == 512  # 2**21 elements / 4096: batches straddle chunks
    rows = torch.cat([s.next_batch().x for _ in range(2)])  # 600 rows over 2 chunks
    assert rows.shape == (600, 4096)
    firsts = rows[:, 0]
    assert len(torch.unique(firsts)) == 600  # no sample repeated
    held = torch.cat([s.test_set().x[:, 0], s.probe(40).x[:, 0]])
    assert not torch.isin(held, firsts).any()
    assert not torch.isin(s.test_set().x[:, 0], s.probe(40).x[:, 0]).any()


def test_targets_unit_variance_and_noise():
    clean = make_stream(teacher(test_size=20_000), batch_size=1, dtype=torch.float64)
    t = clean.test_set().target
    assert torch.allclose(t.mean(0), torch.zeros(3, dtype=torch.float64), atol=0.05)
    assert torch.allclose(t.std(0), torch.ones(3, dtype=torch.float64), atol=0.05)
    noisy = make_stream(teacher(test_size=20_000, noise=0.5), batch_size=1, dtype=torch.float64)
    tn = noisy.test_set()
    assert torch.equal(tn.x, clean.test_set().x)
    residual = tn.target - t
    assert abs(residual.std().item() - 0.5) < 0.02
    assert torch.equal(tn.label, tn.target.argmax(1))
    # the teacher is a real function of x: recomputing it from x gives the clean target
    assert isinstance(clean, TeacherStream)
    np.testing.assert_allclose(clean.teacher(clean.test_set().x.numpy()), t.numpy(), rtol=1e-12)


def test_labels_use_all_classes():
    s = make_stream(teacher(n_classes=5, test_size=5000), batch_size=1)
    counts = torch.bincount(s.test_set().label, minlength=5)
    assert (counts > 300).all()  # a degenerate teacher would pile everything into one class


def test_bad_input():
    with pytest.raises(ConfigError, match="train.batch_size"):
        make_stream(teacher(), batch_size=0)
    with pytest.raises(ConfigError, match="train.probe_size"):
        make_stream(teacher(), batch_size=2).probe(0)
    assert issubclass(DataError, ConfigError)
