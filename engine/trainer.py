"""The batched ensemble trainer: K (γ, η, seed) cells that share shapes, trained as one computation.

Online SGD, step size N·η per member (train.optimizer = "adam": engine/optim.py's batched Adam, its
state in _Ensemble), every member sees the same fresh batch at step t.
train_loss (the fresh batch's loss *before* the update) is logged every step, accumulated on the
device and copied to the host only at flushes (every `flush_every` steps and at eval steps), so the
hot loop has no host synchronization. The costly diagnostics run on the log-spaced `eval_schedule`
(engine/diagnostics_cost.py): eval_points of them, at most one per 20 steps of the run (at least 5)
and no more than fit in train.eval_budget of the training time (at least 3).
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

Code: train_on_stream drives a _Run, one unit in training: its set-up (the model, _Ensemble.start's
device state, the eval schedule), `step` (the update and divergence detection, no host
synchronization), `flush` (the above, in that order) and `results`. _Bookkeeping holds the host
side by original member (ends, summaries, early results), _Evaluator the costly metrics.
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
from engine.diagnostics_cost import eval_plan, eval_schedule, eval_steps  # noqa: F401 - tests, bench
from engine.ensemble import EnsembleModel, Params
from engine.mlp import MLP
from engine.models import build_model
from engine.optim import AdamState, adam_step

NTK_PROBE_MAX = 64  # NTK cost grows with P² (MLP) or P·C backward passes (others): cap the probe
# the sharpness by Lanczos (engine.metrics.top_hessian_eigenvalue_lanczos): at most this many
# Hessian-vector products at a unit's first eval (_Evaluator._cold_start) and at later ones (warm-started
# from the previous eval's Ritz vector), each member done at a Ritz residual of SHARPNESS_TOL·λ. The
# residual bounds the distance to the nearest eigenvalue, which for a close top pair can be the second:
# at 1e-2 one member of bench/engine.py's grid read 1.8% low at init (its top gap ~2%); at 3e-3 every
# (member, eval) of that grid's run is within 2.3e-4 of a float64 reference (bench/sharpness.py)
SHARPNESS_PRODUCTS_COLD = 40
SHARPNESS_PRODUCTS_WARM = 20
SHARPNESS_TOL = 3e-3


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
    hooks = _Hooks(on_metrics, should_cancel, on_progress, on_result)
    run = _Run(configs, stream, device=device, flush_every=flush_every, compact=compact, hooks=hooks)
    for t in range(run.steps):
        if t in run.evals:
            run.evaluate(t)
        run.step(t)
        if run.flush_due(t) and run.flush(t):
            break  # the whole unit was cancelled, or no member is left training
    return run.results()


@dataclass
class _Hooks:
    """train_on_stream's callbacks (docs/contracts.md), called at flushes only."""

    on_metrics: Callable[[MetricBatch], None] | None
    should_cancel: Callable[[], bool | Collection[str]] | None
    on_progress: Callable[[int, int], None] | None
    on_result: Callable[[RunResult], None] | None


class _Run:
    """One unit in training: its set-up (__init__), the update of every step (step), the flush
    (flush: the loop's only host synchronization) and the results (results). The device state is in
    `ens` (_Ensemble), the host side in `books` (_Bookkeeping), the costly metrics in `evaluator`."""

    def __init__(
        self, configs: list[RunConfig], stream: _Stream, *, device: str, flush_every: int, compact: bool, hooks: _Hooks
    ):
        dtype = _dtype_of(configs)
        tc = configs[0].train
        self.stream, self.hooks, self.compact, self.flush_every = stream, hooks, compact, flush_every
        self.steps, self.loss, self.device = tc.steps, tc.loss, device
        self.model = build_model(configs[0].model, stream.input_shape, stream.n_outputs)
        self.ens = _Ensemble.start(self.model, configs, dtype=dtype, device=device, flush_every=flush_every)
        # catapult allowance (module docstring): divergence_factor × max(1, 1/γ²) × step-0 loss; read at
        # step 0 only, before any compaction
        self.allowance = tc.divergence_factor * torch.clamp(self.ens.gamma**-2, min=1.0)  # (K,)
        self.zero = torch.zeros((), dtype=dtype, device=device)  # a frozen member's step size
        self.evals = set(eval_plan(configs[0]))  # the unit's configs share model, data and train
        self.evaluator = _Evaluator.for_unit(self.model, stream, tc)
        self.books = _Bookkeeping(configs)
        self.buf_start = 0  # the step held in loss_buf[0]

    def evaluate(self, t: int) -> None:
        """The costly metrics at eval step t, before update t."""
        books = self.books
        self.evaluator.evaluate(self.ens, t, alive=books.alive, rows=books.rows, last_test=books.last_test)

    def step(self, t: int) -> None:
        """Update t of every member on the next batch (a frozen member's step size is 0), its train_loss
        into the device buffer, and divergence detection on the device: no host synchronization."""
        ens, batch = self.ens, self.stream.next_batch()
        step_size = torch.where(ens.alive, ens.lr, self.zero)
        if ens.adam is None:
            losses = self.model.train_step(ens.params, ens.theta0, batch.x, batch.target, batch.label, ens.gamma,
                                           step_size, self.loss)  # fmt: skip
        else:
            losses = adam_step(self.model, ens.adam, ens.params, ens.theta0, batch.x, batch.target, batch.label,
                               ens.gamma, step_size, self.loss)  # fmt: skip
        ens.loss_buf[t - self.buf_start] = losses
        if t == 0:
            ens.threshold = torch.where(losses > 0, losses * self.allowance, ens.threshold)
        newly = ens.alive & ~(torch.isfinite(losses) & (losses <= ens.threshold))
        ens.diverged_at = torch.where(newly, t, ens.diverged_at)
        ens.alive = ens.alive & ~newly

    def flush_due(self, t: int) -> bool:
        """Flush after step t: the buffer is full, t is an eval step, or t is the last step."""
        return (t + 1 - self.buf_start) == self.flush_every or t in self.evals or t == self.steps - 1

    def flush(self, t: int) -> bool:
        """After step t: the buffered train_loss and the deaths to the host, the rows out, the early
        results, progress, cancellation, compaction. True when training stops here."""
        ens, books, hooks = self.ens, self.books, self.hooks
        chunk = ens.loss_buf[: t + 1 - self.buf_start].double().cpu().numpy()  # (T, K')
        div_pos = ens.diverged_at.cpu().numpy()  # (K',) by position in the current ensemble
        books.record_train_loss(ens.members, np.arange(self.buf_start, t + 1), chunk, div_pos, t)
        self._freeze_diverged(div_pos)
        self.buf_start = t + 1
        books.emit(hooks.on_metrics)
        books.report_ended(hooks.on_result)  # after their last points
        if hooks.on_progress is not None:
            hooks.on_progress(t + 1, self.steps)
        if t < self.steps - 1 and hooks.should_cancel is not None and self._cancel(t, hooks.should_cancel()):
            return True
        live = books.alive[ens.members]
        if not live.any():
            return True  # every member diverged or was cancelled: nothing left to train
        if self.compact and not live.all() and len(live) > self.model.min_members:
            ens.keep(self.model, _positions_to_keep(live, self.model.min_members))  # dead members stop costing
        return False

    def _freeze_diverged(self, div_pos: np.ndarray) -> None:
        """The members that diverged since the last flush: back to finite values on the device (a dead
        member may stay as padding), dead on the host."""
        ens = self.ens
        newly_dead = (div_pos >= 0) & self.books.alive[ens.members]
        if newly_dead.any():
            with torch.no_grad():
                dead_pos = torch.as_tensor(np.flatnonzero(newly_dead), device=self.device)
                self.model.reset_members(ens.params, ens.params0, dead_pos)
                if ens.adam is not None:
                    ens.adam.reset(dead_pos)
            self.books.mark_diverged(ens.members[newly_dead], div_pos[newly_dead])

    def _cancel(self, t: int, verdict: bool | Collection[str]) -> bool:
        """should_cancel's verdict after step t: True stops the unit (returns True); run ids freeze
        those members (status 'cancelled', reported at once) and the others go on."""
        books, ens = self.books, self.ens
        if isinstance(verdict, bool | np.bool_):
            if verdict:
                books.status, books.steps_done = "cancelled", t + 1
            return bool(verdict)
        if verdict:
            stop = np.array([books.alive[i] and books.run_ids[i] in verdict for i in ens.members])
            if stop.any():
                books.mark_cancelled(ens.members[stop], t + 1)
                ens.alive &= torch.as_tensor(~stop, device=self.device)
                books.report_ended(self.hooks.on_result)
        return False

    def results(self) -> list[RunResult]:
        """Every member's result, by original member; the final-function arrays of the members that
        trained to the end when "function" is wanted."""
        books, ens = self.books, self.ens
        snaps: dict[int, dict[str, np.ndarray]] = {}
        if "function" in self.evaluator.wanted and books.status == "done":
            snaps = function_probe.final_snapshots(
                self.model, ens.params, ens.theta0, ens.gamma, ens.members, books.alive, self.stream.test_set().x
            )
        return [replace(books.result(i), arrays=snaps[i]) if i in snaps else books.result(i)
                for i in range(len(books.run_ids))]  # fmt: skip


class _Bookkeeping:
    """The host side of a unit, indexed by the original member (configs, run ids, results): how each
    member ended, its train_loss summaries, its last test metrics, and the rows of the current flush."""

    def __init__(self, configs: list[RunConfig]):
        k, steps = len(configs), configs[0].train.steps
        self.run_ids = [c.run_id for c in configs]
        self.rows = _Rows()
        self.alive = np.ones(k, dtype=bool)
        self.diverged_at = np.full(k, -1, dtype=np.int64)
        self.cancelled_at = np.full(k, -1, dtype=np.int64)  # members stopped by a per-run cancel: steps done
        self.last_test: dict[int, tuple[float, float]] = {}
        self.best = np.full(k, np.inf)
        self.final_train = np.full(k, np.nan)
        self.n_tail = tail_steps(steps)  # tail_train_loss: mean over the last TAIL_FRACTION of the steps
        self.tail_from = steps - self.n_tail
        self.tail_sum, self.tail_n = np.zeros(k), np.zeros(k, dtype=np.int64)
        self.status, self.steps_done = "done", steps  # the unit's end, for the members that did not end before
        self.reported: set[int] = set()  # members whose result went to on_result already

    def ended(self, i: int) -> bool:
        """Member i was frozen at a flush (diverged or cancelled)."""
        return bool(not self.alive[i] and (self.diverged_at[i] >= 0 or self.cancelled_at[i] >= 0))

    def record_train_loss(
        self, members: np.ndarray, steps_idx: np.ndarray, chunk: np.ndarray, div_pos: np.ndarray, t: int
    ) -> None:
        """The train_loss of steps steps_idx (chunk (T, K'), by position) into the rows and summaries,
        up to its divergence step for a member that diverged (div_pos, by position)."""
        for pos, i in enumerate(members):
            if self.ended(i):
                continue  # frozen earlier (diverged or cancelled): nothing more to record
            last = div_pos[pos] if div_pos[pos] >= 0 else t
            keep = steps_idx <= last
            vals = chunk[keep, pos]
            self.rows.add(i, steps_idx[keep], "train_loss", vals)
            in_tail = steps_idx[keep] >= self.tail_from
            self.tail_sum[i] += float(vals[in_tail].sum())
            self.tail_n[i] += int(in_tail.sum())
            if vals.size:
                self.final_train[i] = vals[-1]
                finite = vals[np.isfinite(vals)]
                if finite.size:
                    self.best[i] = min(self.best[i], float(finite.min()))

    def mark_diverged(self, members: np.ndarray, at: np.ndarray) -> None:
        self.diverged_at[members] = at
        self.alive[members] = False

    def mark_cancelled(self, members: np.ndarray, steps_done: int) -> None:
        self.cancelled_at[members] = steps_done
        self.alive[members] = False

    def emit(self, on_metrics: Callable[[MetricBatch], None] | None) -> None:
        """The rows of this flush to on_metrics (dropped without one)."""
        if on_metrics is not None and len(self.rows):
            on_metrics(self.rows.emit(self.run_ids))
        else:
            self.rows.clear()

    def report_ended(self, on_result: Callable[[RunResult], None] | None) -> None:
        """The results of the members that ended since the last report, to on_result."""
        if on_result is None:
            return
        for i in np.flatnonzero(~self.alive):
            if int(i) not in self.reported and self.ended(int(i)):
                self.reported.add(int(i))
                on_result(self.result(int(i)))

    def result(self, i: int) -> RunResult:
        """Member i's result: its own end (diverged, cancelled) or the unit's (status, steps_done)."""
        summary = {"final_train_loss": float(self.final_train[i]), "best_train_loss": float(self.best[i])}
        if self.tail_n[i] == self.n_tail:  # the whole window trained (not a cancelled or diverged member)
            summary["tail_train_loss"] = float(self.tail_sum[i] / self.n_tail)
        if i in self.last_test:
            summary["final_test_loss"], summary["final_test_acc"] = self.last_test[i]
        summary = {key: v for key, v in summary.items() if math.isfinite(v)}
        run_id = self.run_ids[i]
        if self.diverged_at[i] >= 0:
            step = int(self.diverged_at[i])
            return RunResult(run_id, "diverged", step + 1, step, summary)
        if self.cancelled_at[i] >= 0:
            return RunResult(run_id, "cancelled", int(self.cancelled_at[i]), None, summary)
        return RunResult(run_id, self.status, self.steps_done, None, summary)


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
    # in an ensemble of distinct members only (subset): each left-out original member's twin in it
    twins: dict[int, int] = field(default_factory=dict)

    @classmethod
    def start(
        cls, model: EnsembleModel, configs: Sequence[RunConfig], *, dtype: torch.dtype, device: str, flush_every: int
    ) -> _Ensemble:
        """Every member at init, alive. θ0 is a frozen copy for centering and movement; the MLP lays θ
        and θ0 out side by side so that one batched GEMM per layer computes both forwards."""
        k, tc = len(configs), configs[0].train
        params, params0 = model.init_pair([c.seed for c in configs], dtype=dtype, device=device)
        ens = cls(
            members=np.arange(k), params=params, params0=params0, centered=configs[0].model.centered,
            gamma=torch.tensor([c.gamma for c in configs], dtype=dtype, device=device),  # (K,)
            lr=torch.tensor([c.learning_rate for c in configs], dtype=dtype, device=device),  # (K,) N·η
            alive=torch.ones(k, dtype=torch.bool, device=device),
            diverged_at=torch.full((k,), -1, dtype=torch.int64, device=device),
            threshold=torch.full((k,), math.inf, dtype=dtype, device=device),
            loss_buf=torch.empty(flush_every, k, dtype=dtype, device=device),  # on-device train_loss
        )  # fmt: skip
        if tc.optimizer == "adam":  # lr is η then (RunConfig.learning_rate); engine/optim.py scales it per layer
            ens.adam = AdamState.zeros(model, params)
        return ens

    @property
    def theta0(self) -> Params | None:
        """θ0 for centering, None when the model is not centered."""
        return self.params0 if self.centered else None

    def subset(self, reps: np.ndarray, inverse: np.ndarray) -> _Ensemble:
        """The members at positions reps as an ensemble of their own, for the costly metrics: plain
        (gathered) parameters, every member's eigenvectors gathered too; `twins` maps each left-out
        original member to its twin's (inverse: each position's index in reps)."""
        idx = torch.as_tensor(reps, dtype=torch.long, device=self.gamma.device)
        pick = lambda p: {n: v[idx] for n, v in p.items()}  # noqa: E731
        twins = {int(self.members[p]): int(self.members[reps[j]]) for p, j in enumerate(inverse) if reps[j] != p}
        return replace(
            self, members=self.members[reps], params=pick(self.params), params0=pick(self.params0),
            gamma=self.gamma[idx], lr=self.lr[idx], alive=self.alive[idx], diverged_at=self.diverged_at[idx],
            threshold=self.threshold[idx], eig_vec=None if self.eig_vec is None else pick(self.eig_vec),
            adam=None, twins=twins,
        )  # fmt: skip

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
        found = _distinct_members(ens) if DEDUPLICATE_EVALS else None
        if found is None:
            values = self._values(ens, ens, None)
        else:  # members with the same θ, θ0 and γ (at step 0: the same seed and γ) are evaluated once
            index = torch.as_tensor(found[1], device=ens.gamma.device)
            values = {name: v[index] for name, v in self._values(ens.subset(*found), ens, found).items()}
        host = {name: v.double().cpu().numpy() for name, v in values.items()}
        for pos, member in enumerate(ens.members.tolist()):
            if not alive[member]:
                continue
            for name, v in host.items():
                rows.add(member, t, name, float(v[pos]))
            if "test_loss" in host:
                last_test[member] = (float(host["test_loss"][pos]), float(host["test_acc"][pos]))

    def _values(
        self, ens: _Ensemble, whole: _Ensemble, found: tuple[np.ndarray, np.ndarray] | None
    ) -> dict[str, Tensor]:
        """Every wanted metric of ens's members, (K',) each. ens is `whole` or its distinct members
        (found = (their positions, each position's index among them): _distinct_members); then the
        sharpness's eigenvectors go back to every member of whole, each duplicate taking its
        representative's, and a cold start takes the random start vector each representative has in
        whole, so a representative's floats are the same either way."""
        values: dict[str, Tensor] = {}
        if self.test is not None:
            values.update(self._test(ens))
        if "alignment" in self.wanted and self.probe is not None:
            values.update(self._alignment(ens))
        if "sharpness" in self.wanted and self.probe is not None:
            cold = whole.eig_vec is None
            start = (self._cold_start(ens, _random_start(whole.params, None if found is None else found[0]))
                     if cold else ens.eig_vec)  # fmt: skip
            values["sharpness"], vectors = self._sharpness(ens, start, cold)
            if found is None:
                whole.eig_vec = vectors
            else:
                index = torch.as_tensor(found[1], device=whole.gamma.device)
                whole.eig_vec = {n: v[index] for n, v in vectors.items()}
        if "movement" in self.wanted:
            for i, name in enumerate(self.model.weight_names):
                values[f"movement_l{i + 1}"] = M.movement(ens.params[name], ens.params0[name])
        return values

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

    def _sharpness(self, ens: _Ensemble, start: Params | None, cold: bool) -> tuple[Tensor, Params]:
        """The top Hessian eigenvalue of the probe loss per member, and its eigenvector (the next eval's
        warm start), from `start` (None: a random one; cold: no earlier eval's vector, more products)."""
        model, gamma, loss_kind = self.model, ens.gamma, self.loss_kind
        px, py, pl = self.probe.x, self.probe.target, self.probe.label
        g0 = self._readout0(ens, "probe", px)  # θ0 takes no part in the Hessian

        def restrict(rows: Tensor) -> M.HVP:  # the product of some members only (their positions)
            pick = {n: v[rows] for n, v in ens.params.items()}
            return model.hvp_operator(pick, px, None if g0 is None else g0[rows], gamma[rows], loss_kind, py, pl)

        hvp = model.hvp_operator(ens.params, px, g0, gamma, loss_kind, py, pl)
        cap = SHARPNESS_PRODUCTS_COLD if cold else SHARPNESS_PRODUCTS_WARM
        gen = torch.Generator(device=gamma.device).manual_seed(0)
        sharpness, vectors, _ = M.top_hessian_eigenvalue_lanczos(
            None, ens.params, cap, start, gen, tol=SHARPNESS_TOL, hvp=hvp,
            # the MLP's hand-written product gives a member the same bits in any company; the vmap
            # architectures' autograd products can move a last bit with the batch (a ViT did, with
            # members left alone at the end), and compaction must change no recorded bit
            restrict=restrict if isinstance(model, MLP) else None,
        )
        return sharpness, vectors

    def _cold_start(self, ens: _Ensemble, random: Params) -> Params:
        """The sharpness's start vectors at a unit's first eval: each member's probe-loss gradient plus a
        random vector, both of unit length. The gradient Jᵀ ∂L/∂f lies mostly along the Hessian's top
        directions (its Gauss–Newton part is Jᵀ H_f J), so Lanczos needs fewer products than from the
        random vector alone (on bench/engine.py's grid at init, 20 against 26 to a residual of 3e-3·λ),
        and the random half keeps a part along every eigenvector, the top one included, where the
        gradient has none."""
        px, py, pl = self.probe.x, self.probe.target, self.probe.label
        g0 = self._readout0(ens, "probe", px)
        k = len(ens.members)
        with torch.enable_grad():
            p = {n: v.detach().requires_grad_(True) for n, v in ens.params.items()}
            loss = M.loss_fn(self.loss_kind, _output(self.model, p, g0, px, ens.gamma), py, pl).sum()
            grads = M.unit_vectors(dict(zip(p, torch.autograd.grad(loss, list(p.values())), strict=True)), k)
        random = M.unit_vectors(random, k)
        return {n: torch.nan_to_num(grads[n], nan=0.0, posinf=0.0, neginf=0.0) + random[n] for n in random}

    def _readout0(self, ens: _Ensemble, key: str, x: Tensor) -> Tensor | None:
        """θ0's readout on a fixed eval input for the current members (None when not centered). Computed
        at the unit's first eval for the members then present and kept by original member; compaction
        only drops members, and every op is per member, so a later eval reads the floats it would compute."""
        if ens.theta0 is None:
            return None
        if key not in self.readout0:
            g0 = _chunked_raw(self.model, ens.params0, x)  # (K', n, C)
            full = g0.new_zeros(max([int(ens.members.max()), *ens.twins]) + 1, *g0.shape[1:])
            full[torch.as_tensor(ens.members, device=g0.device)] = g0
            for dup, rep in ens.twins.items():  # an evaluation of distinct members: θ0 is the same
                full[dup] = full[rep]
            self.readout0[key] = full
        return self.readout0[key][torch.as_tensor(ens.members, device=x.device)]


# Evaluate members with the same θ, θ0 and γ once (_distinct_members): at step 0 every member of a seed
# and γ, so a γ × η grid's first eval costs as many members as its seeds × γ (its sharpness starts cold:
# the costliest eval). False: every member on its own (tests compare the two).
DEDUPLICATE_EVALS = True


def _distinct_members(ens: _Ensemble) -> tuple[np.ndarray, np.ndarray] | None:
    """The positions of ens's distinct members (no earlier member with bit-equal θ, θ0 when centered,
    and γ) and each position's index among them; None when every member is distinct. Candidates are
    matched by γ and each parameter's per-member sum, then compared exactly."""
    k = len(ens.members)
    if k < 2:
        return None
    tensors = [*ens.params.values(), *(ens.params0.values() if ens.centered else ())]
    sums = torch.stack([t.reshape(k, -1).sum(1) for t in tensors], dim=1).tolist()
    gammas = ens.gamma.tolist()
    first: dict[tuple[float, ...], int] = {}
    reps: list[int] = []
    inverse = np.empty(k, dtype=np.int64)
    for p in range(k):
        key = (gammas[p], *sums[p])
        q = first.setdefault(key, p)
        if q != p and all(torch.equal(t[p], t[q]) for t in tensors):
            inverse[p] = inverse[q]
        else:
            inverse[p] = len(reps)
            reps.append(p)
    return None if len(reps) == k else (np.array(reps), inverse)


def _random_start(params: Params, reps: np.ndarray | None) -> Params:
    """Random vectors stacked like params (a generator seeded 0, drawn for the whole ensemble), of the
    members at positions reps (None: every member's)."""
    gen = torch.Generator(device=next(iter(params.values())).device).manual_seed(0)
    drawn = {n: torch.randn(p.shape, dtype=p.dtype, device=p.device, generator=gen) for n, p in params.items()}
    if reps is None:
        return drawn
    return {n: v[torch.as_tensor(reps, dtype=torch.long, device=v.device)] for n, v in drawn.items()}


# Points per forward on the held-out set: bounds memory (K × slice × widths; engine.memory). On a CPU,
# slices of 128 keep a layer's activations near the caches: the 36-member MLP of bench/engine.py
# (width 256) takes 1000 test points in 36-39 ms by 128, 45-50 by 256, 72-76 by 1024 (two threads).
EVAL_CHUNK = 1024
EVAL_CHUNK_CPU = 128


def _chunked_raw(model: EnsembleModel, params: Params, x: Tensor) -> Tensor:
    """The readout g (K, n, C) on a large input in slices of EVAL_CHUNK (EVAL_CHUNK_CPU on a CPU)."""
    size = EVAL_CHUNK_CPU if x.device.type == "cpu" else EVAL_CHUNK
    return torch.cat([model.raw(params, x[s : s + size])[0] for s in range(0, x.shape[0], size)], dim=1)


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
