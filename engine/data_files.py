"""File-backed datasets, memory-mapped and consumed once in order. `data.path` is relative to the data
folder and must stay inside it (checked after resolving symlinks, for every file opened).

Layouts (the last `test_size` samples, i.e. the end of the last file, are the held-out test set):

- `cifar5m`: the public CIFAR-5M parts. `path` is a folder holding `cifar5m_part0.npz`,
  `cifar5m_part1.npz`, ... (numbered from 0 without gaps; read in that order) or one such `.npz` file.
  Each holds `X` uint8 (n, 32, 32, 3) and `Y` integer (n,) in 0..9. Inputs: (3, 32, 32), /255 then
  standardized per channel with the CIFAR-10 mean and std.
- `mnist1m`: a folder of `.npy` chunks `mnist1m_X_{i}.npy` / `mnist1m_Y_{i}.npy`, i = 0, 1, ...
  (no gaps). X uint8 or float (n, 28, 28) or (n, 1, 28, 28); Y integer (n,) in 0..9. Inputs
  (1, 28, 28); uint8 is /255 then standardized with the MNIST mean and std, floats are used as stored.
- `npz`: one `.npz` file with `X` and `Y`: X (n, D) vectors, (n, H, W) one-channel images or 4-D
  images, NCHW when X.shape[1] is the smallest of the last three sizes, else NHWC; Y integer (n,)
  in 0..n_classes−1. uint8 X is divided by 255, float X is used as stored.

Why .npz members can be memory-mapped: `np.savez` stores members uncompressed (ZIP_STORED), so a member
is a plain `.npy` at a fixed offset in the zip file; we read the zip's local header to find that offset
and `np.memmap` the array there — nothing is extracted or copied. Compressed members
(`np.savez_compressed`) cannot be mapped: they are decompressed into memory once, with a log line.
"""

from __future__ import annotations

import logging
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.config import DataConfig
from engine.data_finite import FiniteStream, RowSource, XLayout
from engine.data_stream import DataError

log = logging.getLogger(__name__)

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FLOAT_DTYPES = (np.float16, np.float32, np.float64)
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # zip local file header: 30 bytes


@dataclass
class OpenedFiles:
    """A validated file dataset: rows, what one input looks like, and how to finish x on the device."""

    source: RowSource
    name: str
    input_shape: tuple[int, ...]
    n_outputs: int
    x_layout: XLayout


def resolve_inside(data_root: Path | None, rel: str | None) -> Path:
    """data_root / rel, resolved (symlinks followed); DataError unless it stays inside data_root."""
    if data_root is None:
        raise DataError("data.path", "file-backed datasets need the data folder (data_root) to be set")
    if not rel:
        raise DataError("data.path", "give a path inside the data folder")
    root = Path(data_root).resolve()
    target = (root / rel).resolve()
    if not target.is_relative_to(root):
        raise DataError("data.path", f"{rel!r} leads outside the data folder {root} (via '..' or a symlink)")
    return target


def _inside(root: Path, path: Path, rel: str) -> Path:
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise DataError("data.path", f"{rel}: {path.name} is a link leading outside the data folder")
    return resolved


def open_npy(path: Path, rel: str) -> np.ndarray:
    """Memory-map one .npy file (no pickles)."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError("data.path", f"{rel}: cannot read {path.name} as a .npy array ({exc})") from None
    if not isinstance(arr, np.ndarray):
        raise DataError("data.path", f"{rel}: {path.name} is not a .npy array")
    return arr


def npz_member(path: Path, member: str, rel: str) -> np.ndarray:
    """Array `member` of an .npz: memory-mapped in place when stored uncompressed, else decompressed."""
    try:
        with zipfile.ZipFile(path) as zf:
            try:
                info = zf.getinfo(member + ".npy")
            except KeyError:
                names = ", ".join(n.removesuffix(".npy") for n in zf.namelist())
                raise DataError(
                    "data.path", f"{rel}: {path.name} has no array {member!r} (it has: {names or 'nothing'})"
                ) from None
            if info.compress_type != zipfile.ZIP_STORED:
                log.info("%s: member %s is compressed; decompressing it into memory", path, member)
                with zf.open(info) as f:
                    return np.lib.format.read_array(f, allow_pickle=False)
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            header = f.read(_LOCAL_HEADER.size)
            if len(header) < _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
                raise ValueError("bad zip local header")
            fields = _LOCAL_HEADER.unpack(header)
            start = info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1]  # + name + extra
            f.seek(start)
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
        if dtype.hasobject:
            raise ValueError("object arrays are not allowed")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if offset + nbytes > start + info.file_size or offset + nbytes > path.stat().st_size:
            raise ValueError(f"member {member} is truncated")
        if nbytes == 0:
            return np.empty(shape, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, struct.error) as exc:
        raise DataError("data.path", f"{rel}: cannot read {path.name} as an .npz archive ({exc})") from None


def check_labels(y: np.ndarray, n_x: int, n_classes: int, where: str) -> None:
    """Y must be (n,) integers in [0, n_classes) with one label per row of X."""
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError("data.path", f"{where}: Y must be a 1-D integer array of labels (got {y.dtype} {y.shape})")
    if len(y) != n_x:
        raise DataError("data.path", f"{where}: X has {n_x:,} rows but Y has {len(y):,} labels")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise DataError(
            "data.path", f"{where}: labels must lie in 0..{n_classes - 1} (found {int(y.min())}..{int(y.max())})"
        )


def _numbered(folder: Path, pattern: str, rel: str) -> list[Path]:
    """Files matching pattern (one {i} group), in order of i; DataError on gaps or none."""
    regex = re.compile(pattern.replace("{i}", r"(\d+)") + "$")
    found = {int(m.group(1)): p for p in folder.iterdir() if (m := regex.match(p.name))}
    if not found:
        raise DataError("data.path", f"{rel}: no files named {pattern.replace('{i}', '<i>')} in {folder}")
    missing = sorted(set(range(max(found) + 1)) - set(found))
    if missing:
        raise DataError(
            "data.path", f"{rel}: {pattern.replace('{i}', str(missing[0]))} is missing (files are numbered from 0)"
        )
    return [found[i] for i in range(len(found))]


def open_cifar5m(cfg: DataConfig, data_root: Path | None) -> OpenedFiles:
    rel = str(cfg.path)
    target = resolve_inside(data_root, rel)
    if not target.exists():
        raise DataError("data.path", f"{rel}: not found (a folder of cifar5m_part<i>.npz files, or one of them)")
    files = [target] if target.is_file() else _numbered(target, "cifar5m_part{i}.npz", rel)
    parts = []
    for f in files:
        f = _inside(Path(data_root or "."), f, rel)
        x, y = npz_member(f, "X", rel), npz_member(f, "Y", rel)
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
            raise DataError("data.path", f"{rel}/{f.name}: X must be uint8 (n, 32, 32, 3) (got {x.dtype} {x.shape})")
        check_labels(y, len(x), 10, f"{rel}/{f.name}")
        parts.append((x, y))
    layout = XLayout(layout="nhwc", scale=1 / 255, mean=CIFAR_MEAN, std=CIFAR_STD)
    return OpenedFiles(RowSource(parts), "cifar5m", (3, 32, 32), 10, layout)


def open_mnist1m(cfg: DataConfig, data_root: Path | None) -> OpenedFiles:
    rel = str(cfg.path)
    folder = resolve_inside(data_root, rel)
    if not folder.is_dir():
        raise DataError("data.path", f"{rel}: not a folder (expected mnist1m_X_<i>.npy / mnist1m_Y_<i>.npy chunks)")
    parts, dtype = [], None
    for fx in _numbered(folder, "mnist1m_X_{i}.npy", rel):
        fy = fx.with_name(fx.name.replace("mnist1m_X_", "mnist1m_Y_"))
        if not fy.exists():
            raise DataError("data.path", f"{rel}: {fx.name} has no labels file {fy.name}")
        x = open_npy(_inside(Path(data_root or "."), fx, rel), rel)
        y = open_npy(_inside(Path(data_root or "."), fy, rel), rel)
        if x.shape[1:] not in ((28, 28), (1, 28, 28)) or not (x.dtype == np.uint8 or x.dtype in FLOAT_DTYPES):
            raise DataError(
                "data.path", f"{rel}/{fx.name}: X must be uint8 or float (n, 28, 28) or (n, 1, 28, 28) "
                f"(got {x.dtype} {x.shape})"
            )
        if dtype is not None and (x.dtype, x.ndim) != dtype:
            raise DataError("data.path", f"{rel}/{fx.name}: every chunk must have the same X dtype and shape")
        dtype = (x.dtype, x.ndim)
        check_labels(y, len(x), 10, f"{rel}/{fy.name}")
        parts.append((x, y))
    x0 = parts[0][0]
    layout = "nhw" if x0.ndim == 3 else "nchw"
    if x0.dtype == np.uint8:
        x_layout = XLayout(layout=layout, scale=1 / 255, mean=MNIST_MEAN, std=MNIST_STD)
    else:
        x_layout = XLayout(layout=layout)
    return OpenedFiles(RowSource(parts), "mnist1m", (1, 28, 28), 10, x_layout)


def open_npz(cfg: DataConfig, data_root: Path | None) -> OpenedFiles:
    rel = str(cfg.path)
    f = resolve_inside(data_root, rel)
    if not f.is_file():
        raise DataError("data.path", f"{rel}: no such file (expected an .npz with arrays X and Y)")
    x, y = npz_member(f, "X", rel), npz_member(f, "Y", rel)
    if not (x.dtype == np.uint8 or x.dtype in FLOAT_DTYPES) or x.ndim not in (2, 3, 4):
        raise DataError(
            "data.path", f"{rel}: X must be uint8 or float, (n, D), (n, H, W) or 4-D images (got {x.dtype} {x.shape})"
        )
    check_labels(y, len(x), cfg.n_classes, rel)
    shape: tuple[int, ...]
    if x.ndim == 2:
        layout, shape = "flat", (x.shape[1],)
    elif x.ndim == 3:
        layout, shape = "nhw", (1, x.shape[1], x.shape[2])
    elif x.shape[1] <= min(x.shape[2], x.shape[3]):
        layout, shape = "nchw", tuple(x.shape[1:])
    else:
        layout, shape = "nhwc", (x.shape[3], x.shape[1], x.shape[2])
    scale = 1 / 255 if x.dtype == np.uint8 else 1.0
    return OpenedFiles(RowSource([(x, y)]), f"npz file {rel}", shape, cfg.n_classes, XLayout(layout, scale))


OPENERS = {"cifar5m": open_cifar5m, "mnist1m": open_mnist1m, "npz": open_npz}


def open_file_dataset(cfg: DataConfig, data_root: Path | None) -> OpenedFiles:
    """Open and validate (shapes, dtypes, labels) without reading any X data."""
    return OPENERS[cfg.dataset](cfg, data_root)


def make_file_stream(
    cfg: DataConfig,
    *,
    batch_size: int,
    data_root: Path | None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> FiniteStream:
    opened = open_file_dataset(cfg, data_root)
    return FiniteStream(
        opened.source,
        name=opened.name,
        test_size=cfg.test_size,
        input_shape=opened.input_shape,
        n_outputs=opened.n_outputs,
        x_layout=opened.x_layout,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
    )
