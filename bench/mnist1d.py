"""MNIST-1D generation speed: the `mnist1d` package's per-sample loop vs engine.mnist1d's vectorized chunks.

Run: python bench/mnist1d.py [--samples N]. Prints samples/s of both, measured side by side, and the ratio.
Not a timed test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

# This file is named mnist1d.py: drop its own folder from the path so `import mnist1d` finds the package.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]


def package_rate(n: int) -> float:
    from mnist1d.data import get_dataset_args, get_templates
    from mnist1d.transform import transform

    args, tmpl = get_dataset_args(), get_templates()
    np.random.seed(0)
    start = time.perf_counter()
    for i in range(n):  # what make_dataset does per sample
        transform(tmpl["x"][i % 10], tmpl["t"], args)
    return n / (time.perf_counter() - start)


def engine_rate(n: int) -> float:
    from engine.mnist1d import sample_raw

    sample_raw(np.random.default_rng(0), 1000)  # build the cached linear maps outside the timing
    rng = np.random.default_rng(1)
    start = time.perf_counter()
    done = 0
    while done < n:
        x, _ = sample_raw(rng, 1 << 14)
        done += len(x)
    return done / (time.perf_counter() - start)


def stream_rate(n: int, batch_size: int = 128) -> float:
    """End to end through make_stream: standardize, one-hot, transfer, slice into batches."""
    from engine.config import DataConfig
    from engine.data import make_stream

    stream = make_stream(DataConfig(dataset="mnist1d"), batch_size=batch_size, dtype=torch.float32)
    stream.next_batch()
    start = time.perf_counter()
    steps = n // batch_size
    for _ in range(steps):
        stream.next_batch()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--package-samples", type=int, default=3000)
    parser.add_argument("--samples", type=int, default=300_000)
    a = parser.parse_args()
    slow = package_rate(a.package_samples)
    fast = engine_rate(a.samples)
    stream = stream_rate(a.samples)
    print(f"mnist1d package (per-sample loop): {slow:12,.0f} samples/s")
    print(f"engine.mnist1d (vectorized)      : {fast:12,.0f} samples/s")
    print(f"engine stream, batches of 128    : {stream:12,.0f} samples/s")
    print(f"ratio vectorized / package       : {fast / slow:12.1f}x")


if __name__ == "__main__":
    main()
