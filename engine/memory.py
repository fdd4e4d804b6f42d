"""How much device memory a work unit takes: an estimate before anything is allocated.

The planner sizes units with it (members × estimate ≤ the worker's `device_memory`) and the worker
checks it before it trains, so a unit too big for its device is split before it fails half way.

A unit of K members whose configs hold U distinct seeds takes

    fixed + K × per_member + U × per_seed  bytes

fixed       the data on the device (one batch, the test set, the probe) and what one member at a
            time needs (the generic NTK's jacobians: P·C·parameters);
per_member  θ, θ0 (a copy per member: movement, resets), the gradient and the update's temporaries
            where autograd trains (not the MLP: its hand-written backward updates in place), the
            training step's activations, and the largest of the costly metrics' buffers (test-set
            forward in slices of 1024, feature and NTK kernels, sharpness's double backward on the
            probe) — they run between steps, after autograd freed the step's activations, but
            beside the MLP's buffers, which are kept from step to step;
per_seed    the MLP's packed θ0 slot and its forward buffers: θ0 depends on the seed only, so a grid
            of many (γ, η) and few seeds keeps few copies (engine.mlp.MLP.init_pair).

Activations: the MLP from its buffers' shapes ((K + U, N, B) per layer, mlp.MLP._buffers); the
other architectures by running one member's forward on the `meta` device (shapes only, nothing
allocated) and adding up what autograd saves for the backward, per example.

It is an estimate, calibrated against measured peaks (bench/memory_estimate.py and
tests/engine/test_memory_estimate.py: estimate / the resident memory a real unit grew by, on CPU,
was 0.67 to 0.81 for an MLP, 0.75 to 1.25 for a CNN, 0.67 to 0.70 for a ResNet, 0.95 to 1.61 for a ViT; the
test asserts 0.5 to 3), not an exact account: allocator caches, the data stream's host
chunks and the libraries' workspaces come on top, which memory_fraction leaves room for. Nothing here
imports anything but torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from engine.config import RunConfig

DTYPE_BYTES = {"float32": 4, "float64": 8}
# FLOPs of one training step per parameter and example: forward 2, backward 4, the centered θ0
# forward 2 more (tasks.planner's time estimate; engine.diagnostics_cost)
FLOPS_PER_PARAM_PER_EXAMPLE = 8.0
TEST_SLICE = 1024  # engine.trainer._chunked_raw evaluates the test set this many examples at a time
NTK_PROBE_MAX = 64  # engine.trainer.NTK_PROBE_MAX
# Autograd's saved tensors are not the whole of a step's peak: the forward's unsaved intermediates,
# vmap's batched copies and the backward's gradients of activations live beside them for a while.
# Measured on a CNN unit (width 16, 32×32 images, K = 8, B = 128): with 2 here the estimate was 0.54
# of the resident memory the unit grew by; with 4 it is 1.0 to 1.2 (B = 64, tests/engine/test_memory_estimate.py).
AUTOGRAD_PEAK = 4.0
# Sharpness differentiates twice: the create_graph backward saves about as much again as the
# forward, and the Hessian-vector products walk it once per power iteration.
DOUBLE_BACKWARD = 3.0


def input_shape(cfg: RunConfig) -> tuple[tuple[int, ...], int]:
    """(input shape of one example, outputs C) from the config alone, without reading data files.
    An npz file's shape is unknown until read: CIFAR-sized images are assumed."""
    d = cfg.data
    if d.dataset == "mnist1d":
        return (40,), 10
    if d.dataset == "digits":
        return (1, 8, 8), 10
    if d.dataset == "cifar5m":
        return (3, 32, 32), 10
    if d.dataset == "mnist1m":
        return (1, 28, 28), 10
    if d.dataset == "teacher":
        shape = (d.channels, d.image_size, d.image_size) if d.image_size > 0 else (d.input_dim,)
        return shape, d.n_classes
    return (3, 32, 32), d.n_classes


def parameter_count(cfg: RunConfig) -> int:
    """Parameters of one member (weights and biases), from the config alone: exact for the MLP, ≈ for
    cnn/resnet/vit (tasks.planner's time estimate, engine.diagnostics_cost's overhead ratio)."""
    m = cfg.model
    n, depth = m.width, m.depth
    shape, c = input_shape(cfg)
    d_in = math.prod(shape)
    if m.arch == "mlp":
        return d_in * n + n + max(depth - 2, 0) * (n * n + n) + n * c + c
    channels = shape[0] if len(shape) == 3 else 1
    if m.arch == "cnn":
        side = max(int(math.sqrt(d_in / channels)), 4) // 4
        return 9 * channels * n + 9 * n * 2 * n + 2 * n * side * side * 8 * n + 8 * n * c
    if m.arch == "resnet":
        # four stages of widths n, 2n, 4n, 8n, depth blocks of two 3x3 convs each
        return sum(depth * 2 * 9 * (n * 2**s) ** 2 for s in range(4)) + 8 * n * c
    # vit: depth blocks of attention (4 n²) and MLP (8 n²), patch embedding, readout
    return depth * 12 * n * n + (m.patch**2) * channels * n + n * c


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one unit's shape: fixed + members × per_member + seeds × per_seed (module docstring)."""

    fixed: int
    per_member: int
    per_seed: int
    parameters: int  # per member, for messages

    def total(self, members: int, seeds: int | None = None) -> int:
        """Bytes of `members` members holding `seeds` distinct seeds (default: one seed each)."""
        return self.fixed + members * self.per_member + (members if seeds is None else seeds) * self.per_seed

    def max_members(self, budget: int, seeds: int | None = None) -> int:
        """The most members that fit `budget` bytes (0 when not even one does). `seeds`: the distinct
        seeds among them, when known (at most that many θ0 slots); else one per member."""
        room = budget - self.fixed
        if room < self.per_member + self.per_seed:
            return 0
        if seeds is not None and self.per_seed:
            k = (room - seeds * self.per_seed) // self.per_member
            if k >= seeds:  # every seed's slot paid for, the rest of the room is members
                return int(k)
        return int(room // (self.per_member + self.per_seed))


def estimate(cfg: RunConfig) -> MemoryEstimate:
    """The memory estimate of `cfg`'s shape (every config of one unit shares it: RunConfig.shape_key)."""
    shape, n_out = input_shape(cfg)
    m, t = cfg.model, cfg.train
    return _estimate(
        m.arch, m.width, m.depth, m.patch, m.heads, m.activation, m.centered, shape, n_out,
        DTYPE_BYTES[cfg.resolved_dtype], t.batch_size, cfg.data.held_out_size, t.probe_size, tuple(sorted(t.metrics)),
        t.eval_points > 0, str(getattr(t, "optimizer", "sgd")),
    )  # fmt: skip


def unit_bytes(configs: Sequence[RunConfig]) -> int:
    """Estimated bytes of training `configs` as one ensemble (their distinct seeds counted once)."""
    if not configs:
        return 0
    return estimate(configs[0]).total(len(configs), len({c.seed for c in configs}))


def describe(nbytes: float) -> str:
    """Bytes for people: '1.5 GiB', '300 MiB'."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(nbytes) >= size:
            return f"{nbytes / size:.3g} {unit}"
    return f"{int(nbytes)} B"


def physical_memory() -> int | None:
    """This machine's RAM in bytes (None where the system does not say)."""
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def cuda_free_memory(device: str) -> int | None:
    """Bytes this process could allocate on a CUDA device now, None without CUDA: the driver's free
    memory (torch.cuda.mem_get_info) plus what torch's caching allocator holds without a tensor in
    it (a worker's second unit would otherwise see its first unit's cache as taken)."""
    import torch

    if not torch.cuda.is_available():
        return None
    index = int(device.split(":", 1)[1]) if ":" in device else torch.cuda.current_device()
    free, _total = torch.cuda.mem_get_info(index)
    cached = torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)
    return int(free + max(cached, 0))


@lru_cache(maxsize=256)
def _estimate(
    arch: str, width: int, depth: int, patch: int, heads: int, act: str, centered: bool,
    shape: tuple[int, ...], n_out: int, b: int, batch: int, n_test: int, n_probe: int,
    metrics: tuple[str, ...], evaluates: bool, optimizer: str = "sgd",
) -> MemoryEstimate:  # fmt: skip
    d_in = math.prod(shape)
    if arch == "mlp":  # analytic, without importing torch (the planner runs this in the CLI)
        dims = [d_in] + [width] * (depth - 1) + [n_out]
        sizes = [size for fan, out in zip(dims[:-1], dims[1:], strict=True) for size in (out * fan, out)]
        # autograd (the metrics' forward; the training step does not use it): each hidden
        # activation once, the output and its square
        saved, largest = float(((depth - 1) * width + 2 * n_out) * b), float(max(width, n_out) * b)
    else:
        from engine.config import ModelConfig
        from engine.models import build_model

        model = build_model(
            ModelConfig(arch=arch, width=width, depth=depth, patch=patch, heads=heads, activation=act,
                        centered=centered),
            shape, n_out,
        )  # fmt: skip
        sizes = [math.prod(s) for s, _ in model.specs.values()]
        traced = _trace(model, shape)
        saved = traced[0] * b / 4  # autograd's saved tensors, one member, one example (traced in float32)
        largest = traced[1] * b / 4  # the largest single activation of one example
    n_params = sum(sizes)
    wanted = set(metrics) if evaluates else set()
    probing = bool(wanted & {"alignment", "sharpness"})
    # the data on the device: a batch, and the held-out sets the metrics use
    examples = batch + (n_test if "test" in wanted else 0) + (n_probe if probing else 0)
    fixed = examples * (d_in + n_out + 1) * b
    per_seed = 0
    if arch == "mlp":
        padded = [out * _packed_row(fan) for fan, out in zip(dims[:-1], dims[1:], strict=True)]
        slot = sum(padded)  # one member's packed layers, a row of (K + U, out, P)
        rows = (depth - 1) * _packed_row(width)  # the augmented activations (M, P, B)
        buffers = batch * (rows + width + n_out)  # acts, the pre-activation scratch h, the readout g
        # θ (packed), θ0 (plain, for movement and resets), the buffers, the gradients δh (K, N, B), f − y
        train: float = (slot + n_params + buffers + batch * (depth - 1) * width + 2 * batch * n_out) * b
        if centered:
            per_seed = (slot + buffers) * b  # the θ0 slot and its rows of the forward buffers
    else:
        # θ, θ0, the gradient; `g * s` and its torch.where beside the largest tensor in the update;
        # the step's activations
        train = (3 * n_params + 2 * max(sizes)) * b + AUTOGRAD_PEAK * saved * batch
    if optimizer == "adam":  # two moments per parameter, and a gradient the MLP's SGD does without
        train += (3 if arch == "mlp" else 2) * n_params * b
    # the costly metrics, one at a time, each member's share
    probes = [0.0]
    if "test" in wanted:
        n_slice = min(TEST_SLICE, n_test)
        probes.append(n_slice * 2 * largest * (2 if centered else 1) + n_test * n_out * 3 * b)
    if "alignment" in wanted:
        n_ntk = min(NTK_PROBE_MAX, n_probe)
        feats = n_probe * (largest + n_probe * b)  # features (P, F) and the kernel (P, P)
        if arch == "mlp":
            ntk = n_ntk * n_out * width * 3 * b + saved * n_ntk  # E (C, P, N), its products, the forward
        else:
            ntk = n_ntk * n_ntk * b * 2
            # jacrev, one member at a time: the jacobian (P·C rows of the parameters) and the P·C
            # cotangents of the widest activation on the probe
            fixed += int(n_ntk * n_out * (2 * n_params * b + n_ntk * largest))
        probes.append(feats + ntk)
    if "sharpness" in wanted:
        probes.append(DOUBLE_BACKWARD * saved * n_probe + 4 * n_params * b)  # v, Hv, the gradient, its graph
    if "movement" in wanted:
        probes.append(2 * max(sizes) * b)
    per_member = int(train + max(probes))
    return MemoryEstimate(fixed=int(fixed), per_member=per_member, per_seed=int(per_seed), parameters=n_params)


def _packed_row(fan_in: int) -> int:
    """P, the MLP's packed row length for a layer of this fan_in: fan_in + 1 (the bias) rounded up
    to 16, as engine.mlp.MLP._width lays it out (written again here: that module imports torch)."""
    return -(-(fan_in + 1) // 16) * 16


def _trace(model: Any, shape: tuple[int, ...]) -> tuple[int, int]:
    """(bytes autograd saves, the largest of them) for one member's centered forward and MSE loss on
    ONE float32 example, run on the meta device (shapes only). Two batch sizes, so that what does not
    grow with the batch (a weight's transposed view) is left out."""
    import torch

    totals, largest = [], 0
    for n in (1, 2):
        p = {k: torch.empty(s, device="meta", requires_grad=True) for k, (s, _) in model.specs.items()}
        p0 = {k: torch.empty(s, device="meta") for k, (s, _) in model.specs.items()}
        x = torch.empty((n, *shape), device="meta")
        kept: dict[int, torch.Tensor] = {}  # by id: a tensor two ops save is stored once

        def pack(t: torch.Tensor, _kept: dict[int, torch.Tensor] = kept, _x: torch.Tensor = x) -> torch.Tensor:
            if t is not _x and t._base is not _x and not (t._base if t._base is not None else t).is_leaf:
                _kept[id(t)] = t
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model.output_one(p, p0 if model.config.centered else None, x, torch.ones((), device="meta"))
            (out * out).mean()
        sizes = [t.numel() * t.element_size() for t in kept.values()]
        totals.append(sum(sizes))
        if n == 2:
            largest = max(sizes, default=0) // 2
    return max(totals[1] - totals[0], 0), largest


class UnitTooBig(MemoryError):
    """A unit's estimate exceeds the memory budget: raised before anything is allocated, and handled
    as the device running out of memory would be (the worker splits the unit)."""


def require_fits(configs: Sequence[RunConfig], budget: int, where: str = "the budget") -> None:
    """Raise UnitTooBig when `configs` as one ensemble are estimated above `budget` bytes."""
    need = unit_bytes(configs)
    if need > budget:
        raise UnitTooBig(
            f"{len(configs)} member(s) need about {describe(need)} (estimate), more than the {describe(budget)} "
            f"of {where}"
        )


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` says the device ran out of memory: torch.OutOfMemoryError (CUDA), MemoryError
    (UnitTooBig, Python's own), or the RuntimeError of torch's CPU allocator."""
    if isinstance(exc, MemoryError):
        return True
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def release_cached(device: str) -> None:
    """Give what a failed unit held back to the device before its halves start."""
    import gc

    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
