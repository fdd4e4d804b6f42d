"""The batched ensemble trainer: K (γ, η, seed) cells that share shapes, trained as one computation.

Online SGD, step size N·η per member (train.optimizer = "adam": engine/optim.py's batched Adam, its
state in _Ensemble), every member sees the same fresh batch at step t.
train_loss (the fresh batch's loss *before* the update) is logged every step, accumulated on the
device and copied to the host only at flushes (every `flush_every` steps and at eval steps), so the
hot loop has no host synchronization. The costly diagnostics run on the log-spaced `eval_schedule`
(engine/diagnostics_cost.py): eval_points of them, at most one per 20 steps of the run (at least 5).
Each run's summary holds final_train_loss (the last batch: one noisy draw), best_train_loss,
tail_train_loss (the mean over the last 10 % of the steps, engine.analysis.tail_steps: what η* and
the fits read by default) and, with the test metric, final_test_loss and final_test_acc.

Divergence: a member whose loss is NaN/inf or above divergence_factor × max(1, 1/γ²) × its step-0
loss is frozen
(step size masked to 0 at once on the device; its parameters reset to the finite θ0 at the next
flush), its step is kept and recorded, its status is 'diverged'. Members never mix (every batched
op is independent per member), so a diverging member cannot disturb the others.

Why max(1, 1/γ²): just above the lazy edge of stability a net *catapults* — the loss first grows by
~1/γ² (the features must move by O(1) relative, and they move ∝ γ·Δf), then the kernel flattens and
training converges (design.md §2: "a catapult window sits just below η_max"). A fixed factor calls
those convergent runs diverged at small γ only and bends the measured lazy slope of η_max(γ) from 2
to ~2.5 (tests/engine/test_physics_lazy.py); scaling the threshold with 1/γ² keeps the catapults.
Runs that really diverge grow geometrically and cross it a few steps later.

Compaction: at the flush where members die (diverged or cancelled) the live ones are gathered into
a smaller ensemble (EnsembleModel.select_members: every per-member tensor, the MLP's packed θ/θ0
slots, γ, η, thresholds, the loss buffer, the sharpness eigenvectors), so a dead member stops
costing GEMM time at the next flush, not at the end of the unit. Every op is per member, so the
survivors compute bit for bit what they computed before (tests/engine/test_trainer_compaction.py);
results, points and callbacks stay indexed by the original members.

Cancellation: `should_cancel()` is called at each flush and returns True (stop every member) or the
run ids to stop (those members are frozen, status 'cancelled'; the others go on). The loop ends
early once no member is left training.

Early results: `on_result(result)` is called at the flush where a member diverges or is cancelled,
after that flush's points, so its run ends then and not when the whole ensemble does (a diverged
run showed "running" for the rest of its work unit). The returned list still holds every member.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from engine import function_probe
from engine import metrics as M
from engine.analysis import tail_steps
from engine.config import ConfigError, RunConfig, TrainConfig
from engine.diagnostics_cost import eval_schedule, eval_steps  # noqa: F401 - eval_steps: tests, bench
from engine.ensemble import EnsembleModel, Params
from engine.mlp import MLP
from engine.models import build_model
from engine.optim import AdamState, adam_step

NTK_PROBE_MAX = 64  # NTK cost grows with P² (MLP) or P·C backward passes (others): cap the probe
SHARPNESS_ITERS_COLD = 20
SHARPNESS_ITERS_WARM = 8  # warm-started from the previous eval's eigenvector


@dataclass
class MetricBatch:
    """Columnar metric rows of one flush of the whole ensemble."""

    run_ids: list[str]
    member: np.ndarray  # (P,) int32
    step: np.ndarray  # (P,) int64
    metric: list[str]  # (P,)
    value: np.ndarray  # (P,) float64

    def for_run(self, i: int) -> tuple[np.ndarray, list[str], np.ndarray]:
        """(step, metric, value) of member i."""
        sel = np.flatnonzero(self.member == i)
        return self.step[sel], [self.metric[j] for j in sel], self.value[sel]

    def __len__(self) -> int:
        return len(self.metric)


@dataclass
class RunResult:
    run_id: str
    status: str  # 'done' | 'diverged' | 'cancelled'
    steps_done: int
    diverged_step: int | None
    summary: dict[str, float] = field(default_factory=dict)  # finite values only (JSON-safe)
    # metric "function" only, runs that trained to the end: engine.function_probe (output (P, C), gram (P, P))
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


class _Batch(Protocol):
    x: Tensor
    target: Tensor
    label: Tensor


class _Stream(Protocol):
    input_shape: tuple[int, ...]
    n_outputs: int

    def next_batch(self) -> Any: ...
    def test_set(self) -> Any: ...
    def probe(self, n: int) -> Any: ...


def _dtype_of(configs: Sequence[RunConfig]) -> torch.dtype:
    names = {c.resolved_dtype for c in configs}
    if len(names) != 1:
        raise ConfigError("train.dtype", f"the members of one ensemble must share a dtype (got {sorted(names)})")
    return torch.float64 if names.pop() == "float64" else torch.float32


def train_ensemble(
    configs: Sequence[RunConfig],
    *,
    device: str = "cpu",
    data_root: Path | None = None,
    on_metrics: Callable[[MetricBatch], None] | None = None,
    should_cancel: Callable[[], bool | Collection[str]] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    flush_every: int = 50,
    on_result: Callable[[RunResult], None] | None = None,
) -> list[RunResult]:
    """Train every config as one batched ensemble on `device` (docs/contracts.md)."""
    from engine.data import make_stream  # the data package; imported here so models/metrics stand alone

    configs = _check(configs)
    dtype = _dtype_of(configs)
    first = configs[0]
    stream = make_stream(first.data, batch_size=first.train.batch_size, data_root=data_root, device=device, dtype=dtype)
    return train_on_stream(
        configs, stream, device=device, on_metrics=on_metrics, should_cancel=should_cancel,
        on_progress=on_progress, flush_every=flush_every, on_result=on_result,
    )  # fmt: skip


def _check(configs: Sequence[RunConfig]) -> list[RunConfig]:
    configs = list(configs)
    if not configs:
        raise ConfigError("configs", "give at least one run")
    keys = {c.shape_key for c in configs}
    if len(keys) != 1:
        raise ConfigError(
            "configs",
            "all runs of one ensemble must share shapes (model, data, train, dtype); only γ, η, seed may differ",
        )
    return configs


def train_on_stream(
    configs: Sequence[RunConfig],
    stream: _Stream,
    *,
    device: str = "cpu",
    on_metrics: Callable[[MetricBatch], None] | None = None,
    should_cancel: Callable[[], bool | Collection[str]] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    flush_every: int = 50,
    on_result: Callable[[RunResult], None] | None = None,
    compact: bool = True,
) -> list[RunResult]:
    """train_ensemble on an already-built data stream (anything with the DataStream interface).

    compact=False keeps dead members in the batched computation (frozen, as before compaction): the
    reference for the bit-for-bit tests and the dead-member benchmark."""
    configs = _check(configs)
    if flush_every < 1:
        raise ConfigError("flush_every", f"must be an integer >= 1 (got {flush_every})")
    dtype = _dtype_of(configs)
    first = configs[0]
    tc, mc = first.train, first.model
    k = len(configs)
    run_ids = [c.run_id for c in configs]
    model = build_model(mc, stream.input_shape, stream.n_outputs)

    # frozen θ0 for centering and movement; the MLP lays θ and θ0 out side by side so that one
    # batched GEMM per layer computes both forwards
    params, params0 = model.init_pair([c.seed for c in configs], dtype=dtype, device=device)
    gamma = torch.tensor([c.gamma for c in configs], dtype=dtype, device=device)  # (K,)
    ens = _Ensemble(
        members=np.arange(k), params=params, params0=params0, centered=mc.centered, gamma=gamma,
        lr=torch.tensor([c.learning_rate for c in configs], dtype=dtype, device=device),  # (K,) N·η
        alive=torch.ones(k, dtype=torch.bool, device=device),
        diverged_at=torch.full((k,), -1, dtype=torch.int64, device=device),
        threshold=torch.full((k,), math.inf, dtype=dtype, device=device),
        loss_buf=torch.empty(flush_every, k, dtype=dtype, device=device),  # on-device train_loss
    )  # fmt: skip
    if tc.optimizer == "adam":  # lr is η then (RunConfig.learning_rate); engine/optim.py scales it per layer
        ens.adam = AdamState.zeros(model, params)
    # catapult allowance (module docstring): divergence_factor × max(1, 1/γ²) × step-0 loss; read at
    # step 0 only, before any compaction
    allowance = tc.divergence_factor * torch.clamp(gamma**-2, min=1.0)  # (K,)

    evals = set(eval_schedule(tc.steps, tc.eval_points))
    evaluator = _Evaluator.for_unit(model, stream, tc)

    # host bookkeeping, indexed by the original member (configs, run ids, results)
    rows = _Rows()
    alive_host = np.ones(k, dtype=bool)
    diverged_host = np.full(k, -1, dtype=np.int64)
    last_test: dict[int, tuple[float, float]] = {}
    best = np.full(k, np.inf)
    final_train = np.full(k, np.nan)
    n_tail = tail_steps(tc.steps)  # tail_train_loss: mean over the last TAIL_FRACTION of the steps
    tail_sum, tail_n = np.zeros(k), np.zeros(k, dtype=np.int64)
    buf_start = 0
    status = "done"
    steps_done = tc.steps
    cancelled_at = np.full(k, -1, dtype=np.int64)  # members stopped by a per-run cancel: steps done

    def result(i: int) -> RunResult:
        """Member i's result: its own end (diverged, cancelled) or the ensemble's (status, steps_done)."""
        c = configs[i]
        summary = {"final_train_loss": float(final_train[i]), "best_train_loss": float(best[i])}
        if tail_n[i] == n_tail:  # the whole window trained (not a cancelled or diverged member)
            summary["tail_train_loss"] = float(tail_sum[i] / n_tail)
        if i in last_test:
            summary["final_test_loss"], summary["final_test_acc"] = last_test[i]
        summary = {key: v for key, v in summary.items() if math.isfinite(v)}
        if diverged_host[i] >= 0:
            step = int(diverged_host[i])
            return RunResult(c.run_id, "diverged", step + 1, step, summary)
        if cancelled_at[i] >= 0:
            return RunResult(c.run_id, "cancelled", int(cancelled_at[i]), None, summary)
        return RunResult(c.run_id, status, steps_done, None, summary)

    reported: set[int] = set()  # members whose result went to on_result already

    def report_ended() -> None:
        if on_result is None:
            return
        for i in np.flatnonzero(~alive_host):
            if int(i) not in reported and (diverged_host[i] >= 0 or cancelled_at[i] >= 0):
                reported.add(int(i))
                on_result(result(int(i)))

    for t in range(tc.steps):
        if t in evals:
            evaluator.evaluate(ens, t, alive=alive_host, rows=rows, last_test=last_test)
        batch = stream.next_batch()
        step_size = torch.where(ens.alive, ens.lr, torch.zeros((), dtype=dtype, device=device))
        if ens.adam is None:
            losses = model.train_step(
                ens.params, ens.theta0, batch.x, batch.target, batch.label, ens.gamma, step_size, tc.loss
            )
        else:
            losses = adam_step(model, ens.adam, ens.params, ens.theta0, batch.x, batch.target, batch.label,
                               ens.gamma, step_size, tc.loss)  # fmt: skip
        ens.loss_buf[t - buf_start] = losses
        if t == 0:
            ens.threshold = torch.where(losses > 0, losses * allowance, ens.threshold)
        newly = ens.alive & ~(torch.isfinite(losses) & (losses <= ens.threshold))
        ens.diverged_at = torch.where(newly, t, ens.diverged_at)
        ens.alive = ens.alive & ~newly

        if (t + 1 - buf_start) == flush_every or t in evals or t == tc.steps - 1:
            # -- flush: the only host synchronization of the loop
            chunk = ens.loss_buf[: t + 1 - buf_start].double().cpu().numpy()  # (T, K')
            div_pos = ens.diverged_at.cpu().numpy()  # (K',) by position in the current ensemble
            steps_idx = np.arange(buf_start, t + 1)
            for pos, i in enumerate(ens.members):
                if not alive_host[i] and (diverged_host[i] >= 0 or cancelled_at[i] >= 0):
                    continue  # frozen earlier (diverged or cancelled): nothing more to record
                last = div_pos[pos] if div_pos[pos] >= 0 else t
                keep = steps_idx <= last
                vals = chunk[keep, pos]
                rows.add(i, steps_idx[keep], "train_loss", vals)
                in_tail = steps_idx[keep] >= tc.steps - n_tail
                tail_sum[i] += float(vals[in_tail].sum())
                tail_n[i] += int(in_tail.sum())
                if vals.size:
                    final_train[i] = vals[-1]
                    finite = vals[np.isfinite(vals)]
                    if finite.size:
                        best[i] = min(best[i], float(finite.min()))
            newly_dead = (div_pos >= 0) & alive_host[ens.members]
            if newly_dead.any():
                with torch.no_grad():  # back to finite values (a dead member may stay as padding)
                    dead_pos = torch.as_tensor(np.flatnonzero(newly_dead), device=device)
                    model.reset_members(ens.params, ens.params0, dead_pos)
                    if ens.adam is not None:
                        ens.adam.reset(dead_pos)
                dead = ens.members[newly_dead]
                diverged_host[dead] = div_pos[newly_dead]
                alive_host[dead] = False
            buf_start = t + 1
            if on_metrics is not None and len(rows):
                on_metrics(rows.emit(run_ids))
            else:
                rows.clear()
            report_ended()  # after their last points
            if on_progress is not None:
                on_progress(t + 1, tc.steps)
            if t < tc.steps - 1 and should_cancel is not None:
                verdict = should_cancel()
                if isinstance(verdict, bool | np.bool_):
                    if verdict:
                        status, steps_done = "cancelled", t + 1
                        break
                elif verdict:  # some run ids: freeze those members, the others go on
                    stop = np.array([alive_host[i] and run_ids[i] in verdict for i in ens.members])
                    if stop.any():
                        cancelled_at[ens.members[stop]] = t + 1
                        alive_host[ens.members[stop]] = False
                        ens.alive &= torch.as_tensor(~stop, device=device)
                        report_ended()
            live = alive_host[ens.members]
            if not live.any():
                break  # every member diverged or was cancelled: nothing left to train
            if compact and not live.all() and len(live) > model.min_members:
                ens.keep(model, _positions_to_keep(live, model.min_members))  # dead members stop costing

    snaps: dict[int, dict[str, np.ndarray]] = {}  # final functions of members that trained to the end
    if "function" in evaluator.wanted and status == "done":
        snaps = function_probe.final_snapshots(model, ens.params, ens.theta0, ens.gamma, ens.members, alive_host,
                                               stream.test_set().x)
    return [replace(result(i), arrays=snaps[i]) if i in snaps else result(i) for i in range(k)]


def _positions_to_keep(live: np.ndarray, at_least: int) -> np.ndarray:
    """The live positions, padded with the first dead ones up to `at_least` (EnsembleModel.min_members;
    a padding member stays frozen: its step size is 0 and nothing of it is recorded)."""
    dead = np.flatnonzero(~live)[: max(0, at_least - int(live.sum()))]
    return np.sort(np.concatenate([np.flatnonzero(live), dead]))


@dataclass
class _Ensemble:
    """The members still in the batched computation and their per-member device state.

    Position p holds the original member members[p]; configs, run ids, results and the host
    bookkeeping stay indexed by the original member. `keep` gathers the live members into a smaller
    ensemble at a flush, so a diverged or cancelled member stops costing GEMM time."""

    members: np.ndarray  # (K',) original member indices
    params: Params
    params0: Params
    centered: bool
    gamma: Tensor  # (K',)
    lr: Tensor  # (K',) N·η
    alive: Tensor  # (K',) bool, cleared on the device the step a member diverges
    diverged_at: Tensor  # (K',) int64, -1 while alive
    threshold: Tensor  # (K',) the divergence threshold, set at step 0
    loss_buf: Tensor  # (flush_every, K') train_loss between flushes
    eig_vec: Params | None = None  # the sharpness eigenvectors, warm start of the next eval
    adam: AdamState | None = None  # train.optimizer = "adam": per-member m, v, steps (engine/optim.py)

    @property
    def theta0(self) -> Params | None:
        """θ0 for centering, None when the model is not centered."""
        return self.params0 if self.centered else None

    def keep(self, model: EnsembleModel, positions: np.ndarray) -> None:
        """Keep only the members at these positions (the others are dead: diverged or cancelled)."""
        idx = torch.as_tensor(positions, dtype=torch.long, device=self.gamma.device)
        with torch.no_grad():
            self.params, self.params0 = model.select_members(self.params, self.params0, idx)
        self.members = self.members[positions]
        self.gamma, self.lr, self.alive = self.gamma[idx], self.lr[idx], self.alive[idx]
        self.diverged_at, self.threshold = self.diverged_at[idx], self.threshold[idx]
        self.loss_buf = self.loss_buf.new_empty(self.loss_buf.shape[0], len(positions))
        if self.eig_vec is not None:
            self.eig_vec = {n: v[idx] for n, v in self.eig_vec.items()}
        if self.adam is not None:
            self.adam = self.adam.select(idx)


class _Rows:
    """Columnar accumulator for one flush."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.member: list[np.ndarray] = []
        self.step: list[np.ndarray] = []
        self.metric: list[str] = []
        self.value: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.metric)

    def add(self, member: int, steps: np.ndarray | int, metric: str, values: np.ndarray | float) -> None:
        steps_arr = np.atleast_1d(np.asarray(steps, dtype=np.int64))
        vals = np.atleast_1d(np.asarray(values, dtype=np.float64))
        self.member.append(np.full(len(steps_arr), member, dtype=np.int32))
        self.step.append(steps_arr)
        self.metric.extend([metric] * len(steps_arr))
        self.value.append(vals)

    def emit(self, run_ids: list[str]) -> MetricBatch:
        batch = MetricBatch(
            run_ids=list(run_ids),
            member=np.concatenate(self.member),
            step=np.concatenate(self.step),
            metric=list(self.metric),
            value=np.concatenate(self.value),
        )
        self.clear()
        return batch


class _Evaluator:
    """The costly metrics of one unit at its eval steps, created once per unit: what every eval reads
    (the model, the held-out set, the probe, the wanted metrics, the loss) and θ0's readouts on those
    fixed inputs, computed at the first eval that needs them (θ0 is frozen: _readout0)."""

    def __init__(self, model: EnsembleModel, *, test: Any, probe: Any, wanted: Collection[str], loss_kind: str):
        self.model, self.test, self.probe, self.wanted, self.loss_kind = model, test, probe, set(wanted), loss_kind
        # θ0's readout on the fixed eval inputs ("test", "probe"), (K, n, C) by original member
        self.readout0: dict[str, Tensor] = {}

    @classmethod
    def for_unit(cls, model: EnsembleModel, stream: _Stream, tc: TrainConfig) -> _Evaluator:
        """The evaluator of a unit with train config tc; takes the probe and the test set from the
        stream only when a wanted metric reads them."""
        wanted = set(tc.metrics)
        probe = stream.probe(tc.probe_size) if wanted & {"alignment", "sharpness"} else None
        test = stream.test_set() if "test" in wanted else None
        return cls(model, test=test, probe=probe, wanted=wanted, loss_kind=tc.loss)

    @torch.no_grad()
    def evaluate(
        self, ens: _Ensemble, t: int, *, alive: np.ndarray, rows: _Rows, last_test: dict[int, tuple[float, float]]
    ) -> None:
        """The costly metrics at eval step t (parameters before update t), recorded in rows for the live
        members (alive: by original member), their test loss and accuracy in last_test; the sharpness
        eigenvectors are kept in ens for the next eval."""
        values: dict[str, Tensor] = {}
        if self.test is not None:
            values.update(self._test(ens))
        if "alignment" in self.wanted and self.probe is not None:
            values.update(self._alignment(ens))
        if "sharpness" in self.wanted and self.probe is not None:
            values["sharpness"] = self._sharpness(ens)
        if "movement" in self.wanted:
            for i, name in enumerate(self.model.weight_names):
                values[f"movement_l{i + 1}"] = M.movement(ens.params[name], ens.params0[name])
        host = {name: v.double().cpu().numpy() for name, v in values.items()}
        for pos, member in enumerate(ens.members.tolist()):
            if not alive[member]:
                continue
            for name, v in host.items():
                rows.add(member, t, name, float(v[pos]))
            if "test_loss" in host:
                last_test[member] = (float(host["test_loss"][pos]), float(host["test_acc"][pos]))

    def _test(self, ens: _Ensemble) -> dict[str, Tensor]:
        test = self.test
        out = _output(self.model, ens.params, self._readout0(ens, "test", test.x), test.x, ens.gamma)  # (K, n, C)
        return {"test_loss": M.loss_fn(self.loss_kind, out, test.target, test.label),
                "test_acc": M.accuracy(out, test.label)}  # fmt: skip

    def _alignment(self, ens: _Ensemble) -> dict[str, Tensor]:
        model, params, probe, gamma = self.model, ens.params, self.probe, ens.gamma
        feats = model.features(params, probe.x)  # (K, P, F)
        kf = M.feature_kernel(feats)
        values = {
            "alignment_feature": M.kernel_alignment(kf, probe.target),
            "alignment_feature_centered": M.kernel_alignment(kf, probe.target, centered=True),
        }
        n_ntk = min(NTK_PROBE_MAX, probe.x.shape[0])
        xs, ys = probe.x[:n_ntk], probe.target[:n_ntk]
        if isinstance(model, MLP):
            kn = model.ntk(params, xs, gamma)
        else:
            kn = _generic_ntk(model, params, ens.theta0, xs, gamma)
        values["alignment_ntk"] = M.kernel_alignment(kn, ys)
        values["alignment_ntk_centered"] = M.kernel_alignment(kn, ys, centered=True)
        return values

    def _sharpness(self, ens: _Ensemble) -> Tensor:
        """The top Hessian eigenvalue of the probe loss; its eigenvectors go to ens.eig_vec (warm start)."""
        model, gamma, loss_kind = self.model, ens.gamma, self.loss_kind
        px, py, pl = self.probe.x, self.probe.target, self.probe.label
        g0 = self._readout0(ens, "probe", px)  # θ0 takes no part in the Hessian

        def probe_loss(p: Params) -> Tensor:
            return M.loss_fn(loss_kind, _output(model, p, g0, px, gamma), py, pl)

        iters = SHARPNESS_ITERS_COLD if ens.eig_vec is None else SHARPNESS_ITERS_WARM
        gen = torch.Generator(device=gamma.device).manual_seed(0)
        sharpness, ens.eig_vec = M.top_hessian_eigenvalue(probe_loss, ens.params, iters, ens.eig_vec, gen)
        return sharpness

    def _readout0(self, ens: _Ensemble, key: str, x: Tensor) -> Tensor | None:
        """θ0's readout on a fixed eval input for the current members (None when not centered). Computed
        at the unit's first eval for the members then present and kept by original member; compaction
        only drops members, and every op is per member, so a later eval reads the floats it would compute."""
        if ens.theta0 is None:
            return None
        if key not in self.readout0:
            g0 = _chunked_raw(self.model, ens.params0, x)  # (K', n, C)
            full = g0.new_zeros(int(ens.members.max()) + 1, *g0.shape[1:])
            full[torch.as_tensor(ens.members, device=g0.device)] = g0
            self.readout0[key] = full
        return self.readout0[key][torch.as_tensor(ens.members, device=x.device)]


EVAL_CHUNK = 1024  # points per forward on the held-out set: bounds memory (K × chunk × widths; engine.memory)


def _chunked_raw(model: EnsembleModel, params: Params, x: Tensor) -> Tensor:
    """The readout g (K, n, C) on a large input in slices of EVAL_CHUNK."""
    return torch.cat([model.raw(params, x[s : s + EVAL_CHUNK])[0] for s in range(0, x.shape[0], EVAL_CHUNK)], dim=1)


def _output(model: EnsembleModel, params: Params, g0: Tensor | None, x: Tensor, gamma: Tensor) -> Tensor:
    """f = (g_θ − g_θ0) / γ with θ0's readout g0 given (_readout0): the same floats as
    model.output(params, θ0, x, gamma), one forward instead of two. → (K, n, C)"""
    g = _chunked_raw(model, params, x)
    if g0 is not None:
        g = g - g0
    return g / gamma.view(-1, *([1] * (g.dim() - 1)))


def _generic_ntk(model: EnsembleModel, params: Params, centered: Params | None, x: Tensor, gamma: Tensor) -> Tensor:
    """Class-summed NTK by jacobians, member by member. θ0 is frozen: only f_θ depends on θ."""
    k = gamma.shape[0]
    kernels = []
    for i in range(k):
        p_i = {n: v[i : i + 1] for n, v in params.items()}

        def fn(p_one: Params, xs: Tensor, _i: int = i) -> Tensor:
            return model.forward_one(p_one, xs)[0] / gamma[_i]

        with torch.enable_grad():
            kernels.append(M.empirical_ntk(fn, p_i, x))
    return torch.cat(kernels)
