"""digits: a finite stream of 8×8 images with a held-out split and an honest reuse warning."""

import logging

import torch
from sklearn.datasets import load_digits

from engine.config import DataConfig
from engine.data import check_data, make_stream


def test_shapes_scale_and_split():
    s = make_stream(DataConfig(dataset="digits", data_seed=1), batch_size=100, dtype=torch.float64)
    assert s.input_shape == (1, 8, 8) and s.n_outputs == 10
    b = s.next_batch()
    assert b.x.shape == (100, 1, 8, 8) and b.x.min() >= 0 and b.x.max() <= 1 and b.x.max() == 1
    assert torch.equal(b.target, torch.nn.functional.one_hot(b.label, 10).double())
    test = s.test_set()
    assert len(test) == 300  # test_size 1000 is capped at 300 for this small set
    # the stream's first epoch and the held-out set partition the 1,797 images exactly
    epoch = torch.cat([b.x] + [s.next_batch().x for _ in range(14)])[:1497]
    everything = torch.cat([epoch, test.x]).reshape(-1, 64)
    ref = torch.tensor(load_digits().images.reshape(-1, 64) / 16.0)
    assert torch.equal(torch.sort(everything, dim=0).values, torch.sort(ref, dim=0).values)
    # no held-out image appears among the training images
    train_rows = {tuple(r.tolist()) for r in epoch.reshape(-1, 64)}
    overlap = sum(tuple(r.tolist()) in train_rows for r in test.x.reshape(-1, 64))
    ref_rows = [tuple(r.tolist()) for r in ref]
    duplicates_in_source = len(ref_rows) - len(set(ref_rows))
    assert overlap <= duplicates_in_source  # only identical images in the source itself could match


def test_reuse_is_flagged_and_warned(caplog):
    cfg = DataConfig(dataset="digits", test_size=97)
    assert check_data(cfg, data_root=None, batch_size=100, steps=17) == []  # 1,700 = all 1,700 rows
    warnings = check_data(cfg, data_root=None, batch_size=128, steps=1000)
    assert warnings == [
        "1,000 steps × 128 = 128,000 samples but digits has 1,700 training samples: data will be reused ~75×"
    ]
    s = make_stream(cfg, batch_size=100)
    for _ in range(17):
        s.next_batch()
    assert s.reused is False
    with caplog.at_level(logging.WARNING):
        s.next_batch()
        s.next_batch()
    assert s.reused is True
    assert sum("reused" in r.message for r in caplog.records) == 1  # logged once


def test_deterministic_per_seed():
    a = make_stream(DataConfig(dataset="digits", data_seed=5), batch_size=64).next_batch()
    b = make_stream(DataConfig(dataset="digits", data_seed=5), batch_size=64).next_batch()
    c = make_stream(DataConfig(dataset="digits", data_seed=6), batch_size=64).next_batch()
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
