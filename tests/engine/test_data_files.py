"""File-backed streams: tiny files in the real formats, read in order through memory maps."""

import os
import zipfile

import numpy as np
import pytest
import torch

from engine.config import DataConfig
from engine.data import DataError, check_data, make_stream
from engine.data_files import CIFAR_MEAN, CIFAR_STD, npz_member


def cifar_part(path, n, start, seed=0, compressed=False):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(start, start + n) % 256  # row id, to check the order
    y = (np.arange(start, start + n) % 10).astype(np.int64)
    (np.savez_compressed if compressed else np.savez)(path, X=x, Y=y)
    return x, y


@pytest.fixture
def cifar_root(tmp_path):
    root = tmp_path / "data"
    (root / "c5m").mkdir(parents=True)
    x0, y0 = cifar_part(root / "c5m" / "cifar5m_part0.npz", 60, 0, seed=0)
    x1, y1 = cifar_part(root / "c5m" / "cifar5m_part1.npz", 40, 60, seed=1)
    return root, np.concatenate([x0, x1]), np.concatenate([y0, y1])


def test_npz_members_are_memory_mapped(cifar_root):
    root, x, _ = cifar_root
    arr = npz_member(root / "c5m" / "cifar5m_part0.npz", "X", "c5m")
    assert isinstance(arr, np.memmap)
    np.testing.assert_array_equal(arr, x[:60])


def test_cifar5m_in_order_across_parts_with_held_out_tail(cifar_root):
    root, x, y = cifar_root
    cfg = DataConfig(dataset="cifar5m", path="c5m", test_size=20)
    s = make_stream(cfg, batch_size=30, data_root=root, dtype=torch.float64)
    assert s.input_shape == (3, 32, 32) and s.n_outputs == 10
    batches = [s.next_batch() for _ in range(2)]  # rows 0..59
    b = batches[1]
    assert b.x.shape == (30, 3, 32, 32)
    scaled = torch.tensor(x[30:60]).permute(0, 3, 1, 2).double() / 255
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(b.x, ((scaled - mean) / std).double())
    assert torch.equal(b.label, torch.tensor(y[30:60]))
    third = s.next_batch()  # rows 60..79 from part 1, then wraps to 0..9: 80 training rows in all
    assert torch.equal(third.label[:20], torch.tensor(y[60:80]))
    assert s.reused is True
    assert torch.equal(third.label[20:], torch.tensor(y[:10]))
    test = s.test_set()  # the held-out set is the last 20 rows (end of the last part)
    assert torch.equal(test.label, torch.tensor(y[80:]))
    assert torch.equal(s.probe(5).label, torch.tensor(y[80:85]))
    warnings = check_data(cfg, data_root=root, batch_size=30, steps=3)
    assert warnings and "80 training samples" in warnings[0] and "~1×" in warnings[0]
    assert check_data(cfg, data_root=root, batch_size=10, steps=8) == []


def test_cifar5m_compressed_part_still_reads(tmp_path):
    x, y = cifar_part(tmp_path / "one.npz", 12, 0, compressed=True)
    s = make_stream(DataConfig(dataset="cifar5m", path="one.npz", test_size=2), batch_size=10, data_root=tmp_path)
    assert torch.equal(s.next_batch().label, torch.tensor(y[:10]))


def test_mnist1m_chunks(tmp_path):
    (tmp_path / "m").mkdir()
    xs = []
    for i, n in enumerate((7, 9)):
        x = np.random.default_rng(i).integers(0, 256, (n, 28, 28), dtype=np.uint8)
        np.save(tmp_path / "m" / f"mnist1m_X_{i}.npy", x)
        np.save(tmp_path / "m" / f"mnist1m_Y_{i}.npy", np.full(n, i, dtype=np.int64))
        xs.append(x)
    cfg = DataConfig(dataset="mnist1m", path="m", test_size=4)
    s = make_stream(cfg, batch_size=10, data_root=tmp_path, dtype=torch.float64)
    assert s.input_shape == (1, 28, 28)
    b = s.next_batch()
    assert b.x.shape == (10, 1, 28, 28) and b.label.tolist() == [0] * 7 + [1] * 3
    raw = torch.tensor(np.concatenate(xs)[:10]).double().unsqueeze(1) / 255
    torch.testing.assert_close(b.x, (raw - 0.1307) / 0.3081)
    assert len(s.test_set()) == 4 and check_data(cfg, data_root=tmp_path, batch_size=12, steps=1) == []


@pytest.mark.parametrize(
    ("shape", "input_shape"),
    [((20, 5), (5,)), ((20, 6, 6, 3), (3, 6, 6)), ((20, 3, 6, 6), (3, 6, 6)), ((20, 6, 6), (1, 6, 6))],
)
def test_npz_layouts(tmp_path, shape, input_shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.savez(tmp_path / "d.npz", X=x, Y=np.arange(20) % 3)
    s = make_stream(DataConfig(dataset="npz", path="d.npz", n_classes=3, test_size=5), batch_size=4, data_root=tmp_path)
    assert s.input_shape == input_shape and s.n_outputs == 3
    b = s.next_batch()
    assert b.x.shape == (4, *input_shape) and b.target.shape == (4, 3)
    first = torch.tensor(x[0])
    if len(shape) == 4 and shape[-1] == 3:
        first = first.permute(2, 0, 1)
    assert torch.equal(b.x[0].reshape(first.shape), first)


# ----------------------------------------------------------------------------- bad input


def npz_cfg(path="d.npz", **kw):
    return DataConfig(dataset="npz", path=path, **{"test_size": 2, **kw})


def assert_data_error(cfg, root, *needles):
    with pytest.raises(DataError) as err:
        check_data(cfg, data_root=root, batch_size=4, steps=1)
    assert err.value.field.startswith("data."), err.value.field
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))
    with pytest.raises(DataError):
        make_stream(cfg, batch_size=4, data_root=root)


def test_missing_files_and_folders(tmp_path):
    assert_data_error(npz_cfg("nope.npz"), tmp_path, "data.path", "nope.npz", "X and Y")
    (tmp_path / "empty").mkdir()
    assert_data_error(DataConfig(dataset="cifar5m", path="empty"), tmp_path, "cifar5m_part<i>.npz")
    assert_data_error(DataConfig(dataset="mnist1m", path="empty"), tmp_path, "mnist1m_X_<i>.npy")
    with pytest.raises(DataError, match="data folder"):
        check_data(npz_cfg(), data_root=None, batch_size=1, steps=1)


def test_gap_in_numbered_parts(tmp_path):
    (tmp_path / "c").mkdir()
    cifar_part(tmp_path / "c" / "cifar5m_part0.npz", 4, 0)
    cifar_part(tmp_path / "c" / "cifar5m_part2.npz", 4, 0)
    assert_data_error(DataConfig(dataset="cifar5m", path="c", test_size=2), tmp_path, "cifar5m_part1.npz is missing")


def test_symlinks_leading_outside_are_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    np.savez(outside / "d.npz", X=np.zeros((5, 2)), Y=np.zeros(5, dtype=int))
    os.symlink(outside / "d.npz", root / "d.npz")
    os.symlink(outside, root / "link")
    assert_data_error(npz_cfg("d.npz"), root, "outside the data folder")
    assert_data_error(npz_cfg("link/d.npz"), root, "outside the data folder")
    (root / "c").mkdir()
    cifar_part(outside / "cifar5m_part0.npz", 4, 0)
    os.symlink(outside / "cifar5m_part0.npz", root / "c" / "cifar5m_part0.npz")
    assert_data_error(DataConfig(dataset="cifar5m", path="c", test_size=2), root, "outside the data folder")


def test_wrong_shapes_dtypes_and_labels(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.zeros((6, 2)), Y=np.array([0, 1, 2, 3, 4, 10]))
    assert_data_error(npz_cfg(n_classes=10), tmp_path, "labels must lie in 0..9", "found 0..10")
    np.savez(tmp_path / "d.npz", X=np.zeros((6, 2)), Y=np.zeros(5, dtype=int))
    assert_data_error(npz_cfg(), tmp_path, "6 rows but Y has 5")
    np.savez(tmp_path / "d.npz", X=np.zeros((6, 2)), Y=np.zeros(6))
    assert_data_error(npz_cfg(), tmp_path, "integer")
    np.savez(tmp_path / "d.npz", X=np.zeros((6,)), Y=np.zeros(6, dtype=int))
    assert_data_error(npz_cfg(), tmp_path, "X must be")
    np.savez(tmp_path / "d.npz", Z=np.zeros((6, 2)))
    assert_data_error(npz_cfg(), tmp_path, "no array 'X'", "Z")
    np.savez(tmp_path / "c.npz", X=np.zeros((6, 28, 28, 3), dtype=np.uint8), Y=np.zeros(6, dtype=int))
    assert_data_error(DataConfig(dataset="cifar5m", path="c.npz", test_size=2), tmp_path, "(n, 32, 32, 3)")
    np.savez(tmp_path / "d.npz", X=np.zeros((3, 2)), Y=np.zeros(3, dtype=int))
    with pytest.raises(DataError, match="test_size"):
        check_data(npz_cfg(test_size=3), data_root=tmp_path, batch_size=1, steps=1)


def test_truncated_and_corrupt_files(tmp_path):
    cifar_part(tmp_path / "full.npz", 10, 0)
    data = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    assert_data_error(DataConfig(dataset="cifar5m", path="cut.npz", test_size=2), tmp_path, "cut.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all" * 10)
    assert_data_error(npz_cfg("junk.npz"), tmp_path, "junk.npz", ".npz")
    # a stored member whose bytes end early (zip directory intact, data cut): rewrite with a short member
    with zipfile.ZipFile(tmp_path / "short.npz", "w") as zf:
        header = data[data.index(b"\x93NUMPY") :][:128]
        zf.writestr("X.npy", header + b"\x00" * 100)
        zf.writestr("Y.npy", b"")
    assert_data_error(npz_cfg("short.npz"), tmp_path, "short.npz")
    (tmp_path / "m").mkdir()
    np.save(tmp_path / "m" / "mnist1m_X_0.npy", np.zeros((50, 28, 28), dtype=np.uint8))
    np.save(tmp_path / "m" / "mnist1m_Y_0.npy", np.zeros(50, dtype=np.int64))
    blob = (tmp_path / "m" / "mnist1m_X_0.npy").read_bytes()
    (tmp_path / "m" / "mnist1m_X_0.npy").write_bytes(blob[:1000])
    assert_data_error(DataConfig(dataset="mnist1m", path="m"), tmp_path, "mnist1m_X_0.npy")
