"""Every dataset delivers batches on the requested device and dtype (CUDA cases run where a GPU is present)."""

import numpy as np
import pytest
import torch

from engine.config import DataConfig
from engine.data import make_stream

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture
def root(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "c.npz", X=x, Y=np.arange(40) % 10)
    return tmp_path


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "cfg",
    [
        DataConfig(dataset="teacher", input_dim=6, n_classes=4, test_size=8),
        DataConfig(dataset="mnist1d", test_size=8),
        DataConfig(dataset="digits", test_size=8),
        DataConfig(dataset="cifar5m", path="c.npz", test_size=8),
    ],
    ids=lambda c: c.dataset,
)
def test_device_and_dtype(cfg, device, dtype, root):
    s = make_stream(cfg, batch_size=16, data_root=root, device=device, dtype=dtype)
    for batch in (s.next_batch(), s.next_batch(), s.test_set(), s.probe(4)):
        assert batch.x.device.type == device and batch.target.device.type == device
        assert batch.label.device.type == device
        assert batch.x.dtype == dtype and batch.target.dtype == dtype and batch.label.dtype == torch.long
        assert batch.x.shape[1:] == s.input_shape and batch.target.shape[1] == s.n_outputs
        assert torch.isfinite(batch.x).all()
