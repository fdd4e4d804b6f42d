"""The costly metrics' schedule and cost (engine/diagnostics_cost.py) and the cached θ0 readout that
halves the test set's forward (engine/trainer.py, issue #13 item 5)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from engine import diagnostics_cost as DC
from engine import trainer
from engine.config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig
from engine.models import build_model
from engine.trainer import _Ensemble, _Evaluator, _output, eval_schedule, eval_steps, train_on_stream
from tests.engine.test_trainer_ensemble import SHAPES, SyntheticStream, make_configs

MODELS = {"mlp": ModelConfig(arch="mlp", width=32, depth=3), "cnn": ModelConfig(arch="cnn", width=16, depth=4)}


def _ensemble(arch: str, seeds: list[int]) -> tuple[object, _Ensemble]:
    model = build_model(MODELS[arch], SHAPES[arch], 3)
    params, params0 = model.init_pair(seeds, dtype=torch.float32)
    k = len(seeds)
    gamma = torch.linspace(0.1, 3.0, k)
    ens = _Ensemble(members=np.arange(k), params=params, params0=params0, centered=True, gamma=gamma,
                    lr=torch.zeros(k), alive=torch.ones(k, dtype=torch.bool),
                    diverged_at=torch.full((k,), -1), threshold=torch.full((k,), np.inf),
                    loss_buf=torch.empty(3, k))  # fmt: skip
    with torch.no_grad():  # members that moved away from θ0, so that f is not 0
        for p in params.values():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    return model, ens


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_cached_theta0_readout_gives_model_output_bit_for_bit_before_and_after_compaction(arch):
    model, ens = _ensemble(arch, [0, 1, 0, 2, 1, 3])
    x = torch.randn(40, *SHAPES[arch], generator=torch.Generator().manual_seed(2))
    evaluator = _Evaluator(model, test=None, probe=None, wanted=(), loss_kind="mse")  # one per unit
    _readout0 = evaluator._readout0
    with torch.no_grad():
        want = model.output(ens.params, ens.params0, x, ens.gamma)
        got = _output(model, ens.params, _readout0(ens, "test", x), x, ens.gamma)
        assert torch.equal(got, want)
        ens.keep(model, np.array([1, 3, 4]))  # members 0, 2, 5 died: the cache is read by original member
        want = model.output(ens.params, ens.params0, x, ens.gamma)
        got = _output(model, ens.params, _readout0(ens, "test", x), x, ens.gamma)
        assert torch.equal(got, want)


def test_uncentered_members_have_no_theta0_readout():
    model, ens = _ensemble("mlp", [0, 1])
    ens.centered = False
    evaluator = _Evaluator(model, test=None, probe=None, wanted=(), loss_kind="mse")
    assert evaluator._readout0(ens, "test", torch.zeros(4, 6)) is None


def test_theta0_forward_runs_once_per_unit_not_at_every_eval(monkeypatch):
    configs = make_configs("mlp", [(1.0, 0.1, 0), (0.5, 0.1, 1)], steps=30, metrics=("test",), eval_points=5)
    model_cls = type(build_model(configs[0].model, SHAPES["mlp"], 3))
    calls = {"n": 0}
    original = model_cls.raw

    def spy(self, params, x):
        calls["n"] += 1
        return original(self, params, x)

    monkeypatch.setattr(model_cls, "raw", spy)
    train_on_stream(configs, SyntheticStream(SHAPES["mlp"]), flush_every=7)
    evals = len(DC.eval_plan(configs[0]))
    assert calls["n"] == evals + 1  # θ at every eval, θ0 once (it was 2 per eval)


def test_eval_schedule_follows_the_run_length():
    assert eval_schedule(2000, 30) == eval_steps(2000, 30)  # long runs keep every point asked for
    assert eval_schedule(600, 30) == eval_steps(600, 30)
    short = eval_schedule(200, 30)
    assert len(short) <= 200 // DC.EVAL_STEPS_PER_POINT < len(eval_steps(200, 30))
    assert short[0] == 0 and short[-1] == 199 and short == sorted(set(short))
    assert eval_schedule(30, 5) == eval_steps(30, 5)  # a few points stay on short runs
    assert eval_schedule(10, 30) == eval_steps(10, DC.EVAL_MIN_POINTS)
    assert eval_schedule(100, 0) == []
    # a budget of fewer evals than the length allows bounds them, down to its own minimum: the first
    # step, one between and the last
    assert eval_schedule(2000, 30, budget=12) == eval_steps(2000, 12)
    assert eval_schedule(2000, 30, budget=1) == eval_steps(2000, DC.EVAL_MIN_BUDGET_POINTS) == [0, 44, 1999]
    assert eval_schedule(200, 30, budget=4) == eval_steps(200, 4)  # below the short runs' 5


def test_the_trainer_evaluates_on_the_schedule():
    configs = make_configs("mlp", [(1.0, 0.1, 0)], steps=240, metrics=("movement",), eval_points=30)
    steps: set[int] = set()

    def keep(batch):
        steps.update(int(s) for s, m in zip(batch.step, batch.metric, strict=True) if m == "movement_l1")

    train_on_stream(configs, SyntheticStream(SHAPES["mlp"]), flush_every=50, on_metrics=keep)
    assert sorted(steps) == eval_schedule(240, 30) != eval_steps(240, 30)


def test_the_cost_model_constants_are_the_trainers():
    assert DC.NTK_PROBE_MAX == trainer.NTK_PROBE_MAX
    assert DC.EVAL_CHUNK_CPU == trainer.EVAL_CHUNK_CPU  # the test set's slices, counted by the overhead model
    # the products the model expects lie within the trainer's caps
    assert 0 < DC.SHARPNESS_PRODUCTS_COLD <= trainer.SHARPNESS_PRODUCTS_COLD
    assert 0 < DC.SHARPNESS_PRODUCTS_WARM <= trainer.SHARPNESS_PRODUCTS_WARM
    assert 0 < DC.SHARPNESS_ITERATIONS_COLD <= trainer.SHARPNESS_PRODUCTS_COLD
    assert 0 < DC.SHARPNESS_ITERATIONS_WARM <= trainer.SHARPNESS_PRODUCTS_WARM


def _config(**train: object) -> RunConfig:
    return RunConfig(
        model=ModelConfig(width=256, depth=3),
        data=DataConfig(dataset="mnist1d"),
        train=TrainConfig(batch_size=128, **train),
        gamma=1.0,
        eta=0.01,
        seed=0,
    )  # type: ignore[arg-type]


def test_diagnostics_cost_per_metric_follows_the_selection_and_the_schedule():
    cost = DC.diagnostics_cost(_config(steps=200))
    assert set(cost) == {"test", "alignment", "sharpness", "movement"}
    assert cost["movement"] == 0 and cost["sharpness"] > cost["test"] > 0 and cost["alignment"] > 0
    assert set(DC.diagnostics_cost(_config(steps=200, metrics=("test",)))) == {"test"}
    assert DC.diagnostics_cost(_config(steps=200, eval_points=0)) == {}
    long_run = DC.diagnostics_cost(_config(steps=3000))
    fewer = DC.diagnostics_cost(_config(steps=3000, eval_points=5))
    assert all(fewer[m] < long_run[m] for m in ("test", "alignment", "sharpness"))
    # per step of training, a longer run with the same points costs less
    longer = DC.diagnostics_cost(_config(steps=20_000))
    assert all(longer[m] < cost[m] for m in ("test", "alignment", "sharpness"))
    cnn = dataclasses.replace(_config(steps=200), model=ModelConfig(arch="cnn", width=16, depth=4),
                              data=DataConfig(dataset="teacher", image_size=8))  # fmt: skip
    assert DC.diagnostics_cost(cnn)["alignment"] > cost["alignment"]  # jacobians, not the MLP's closed form


def test_the_schedule_keeps_the_diagnostics_within_half_of_training_where_it_can():
    runs = [_config(steps=s) for s in (600, 1000, 1500, 3000, 20_000)] + [_mlp(32, 32, steps=s) for s in (1000, 3000)]
    for cfg in runs:
        steps = cfg.train.steps
        plan = DC.eval_plan(cfg)
        assert sum(DC.diagnostics_cost(cfg).values()) <= DC.DIAGNOSTICS_BUDGET
        assert len(plan) <= len(eval_steps(steps, 30)) and plan[0] == 0 and plan[-1] == steps - 1
        # the budget is the most evals that fit: one more would not have
        per, once = DC._cost_per_eval(cfg)
        budget = DC.eval_budget(cfg)
        assert len(plan) <= budget
        assert sum(once.values()) + (budget + 1) * sum(per.values()) > DC.DIAGNOSTICS_BUDGET * steps
    # a short run keeps the budget's minimum even above the budget; a cheap selection keeps every point
    assert len(DC.eval_plan(_config(steps=200))) == DC.EVAL_MIN_BUDGET_POINTS
    assert DC.eval_plan(_config(steps=200, metrics=("movement",))) == eval_schedule(200, 30)
    assert DC.eval_plan(_config(steps=20_000)) == eval_steps(20_000, 30)


def test_the_trainer_evaluates_on_the_budgeted_plan():
    configs = make_configs("mlp", [(1.0, 0.1, 0)], steps=240, metrics=("test", "sharpness"), eval_points=30)
    steps: set[int] = set()

    def keep(batch):
        steps.update(int(s) for s, m in zip(batch.step, batch.metric, strict=True) if m == "test_loss")

    train_on_stream(configs, SyntheticStream(SHAPES["mlp"]), flush_every=50, on_metrics=keep)
    assert sorted(steps) == DC.eval_plan(configs[0])


def test_eval_budget_is_a_setting_that_leaves_old_ids_alone():
    base = _config(steps=200)
    # at its default it is not written: run ids from before the setting stay valid
    assert "eval_budget" not in base.to_dict()["train"]
    assert dataclasses.replace(base, train=dataclasses.replace(base.train, eval_budget=0.5)).run_id == base.run_id
    unbounded = dataclasses.replace(base, train=dataclasses.replace(base.train, eval_budget=0))
    assert unbounded.to_dict()["train"]["eval_budget"] == 0 and unbounded.run_id != base.run_id
    # 0: no budget, the length rule alone (one eval per 20 steps at most)
    assert DC.eval_plan(unbounded) == eval_schedule(200, 30) and len(DC.eval_plan(base)) < len(eval_schedule(200, 30))
    # a larger budget keeps more points than the default on the same run
    roomy = dataclasses.replace(base, train=dataclasses.replace(base.train, eval_budget=2.0))
    assert len(DC.eval_plan(base)) < len(DC.eval_plan(roomy)) <= len(eval_schedule(200, 30))
    for bad in (-0.1, float("nan"), "half", True, 1e4):
        with pytest.raises(ConfigError, match="train.eval_budget"):
            TrainConfig(eval_budget=bad)  # type: ignore[arg-type]


def _mlp(width: int, batch: int, **train: object) -> RunConfig:
    train = {"dtype": "float32", **train}
    return RunConfig(model=ModelConfig(width=width, depth=3), data=DataConfig(dataset="mnist1d"),
                     train=TrainConfig(batch_size=batch, **train), gamma=1.0, eta=0.01, seed=0)  # type: ignore[arg-type]  # fmt: skip


def test_small_mlps_are_costed_by_their_overhead_big_ones_by_their_work():
    sizes = ((16, 16), (32, 32), (64, 64), (256, 128), (1024, 256))
    rhos = [DC.overhead_ratio(_mlp(w, b)) for w, b in sizes]
    assert rhos == sorted(rhos, reverse=True) and rhos[0] > 5 and 0 < rhos[3] < 0.1
    # float64's work is twice as dear: half the overhead per unit of it
    assert DC.overhead_ratio(_mlp(32, 32, dtype="float64")) == pytest.approx(rhos[1] / 2)
    # the autograd architectures are counted by their work alone
    cnn = RunConfig(model=MODELS["cnn"], data=DataConfig(dataset="digits"), train=TrainConfig(), gamma=1.0, eta=0.1,
                    seed=0)  # fmt: skip
    assert DC.overhead_ratio(cnn) == 0 and DC._cost_per_eval(cnn) == DC._work_per_eval(cnn)
    for (w, b), rho in zip(sizes, rhos, strict=True):
        cfg = _mlp(w, b)
        (per, once), (work, work_once), (over, over_once) = (
            DC._cost_per_eval(cfg), DC._work_per_eval(cfg), DC._overhead_per_eval(cfg))  # fmt: skip
        for m in ("test", "alignment", "sharpness"):
            assert min(work[m], over[m]) <= per[m] <= max(work[m], over[m]), (w, b, m)
            # the weight on the overhead-bound cost is ρ / (1 + ρ)
            assert per[m] == pytest.approx((work[m] + rho * over[m]) / (1 + rho))
        assert min(work_once["sharpness"], over_once["sharpness"]) <= once["sharpness"]
        assert once["sharpness"] <= max(work_once["sharpness"], over_once["sharpness"])
    tiny, big = _mlp(16, 16), _mlp(1024, 256)
    assert DC._cost_per_eval(big)[0]["sharpness"] == pytest.approx(DC._work_per_eval(big)[0]["sharpness"], rel=0.02)
    for m in ("test", "alignment", "sharpness"):  # the tiny one's cost is nearer its overhead-bound one
        per, work = DC._cost_per_eval(tiny)[0][m], DC._work_per_eval(tiny)[0][m]
        over = DC._overhead_per_eval(tiny)[0][m]
        assert abs(per - over) < abs(per - work), m


def test_a_small_mlp_keeps_the_eval_points_it_can_afford(monkeypatch):
    # the quick demo's network on a 1000-step run: by work alone an eval looked like ~90 training steps
    # and the budget left 4 of the 30 points; overhead-bound, it is ~30 (bench/diagnostics_cost.py --sizes)
    cfg = _mlp(32, 32, steps=1000)
    plan = DC.eval_plan(cfg)
    with monkeypatch.context() as m:
        m.setattr(DC, "STEP_OVERHEAD_FLOPS", 0.0)
        by_work = DC.eval_plan(cfg)
    assert len(by_work) <= 5 and len(plan) >= 2 * len(by_work)
    assert plan[0] == 0 and plan[-1] == 999
    # and still within the budget by the model, which says less than the work model did
    assert sum(DC.diagnostics_cost(cfg).values()) <= DC.DIAGNOSTICS_BUDGET
    # the benchmark's network is work-bound: its schedule is the work model's
    big = _mlp(256, 128, steps=1000)
    with monkeypatch.context() as m:
        m.setattr(DC, "STEP_OVERHEAD_FLOPS", 0.0)
        big_by_work = DC.eval_plan(big)
    assert 10 <= len(big_by_work) < 30 and abs(len(DC.eval_plan(big)) - len(big_by_work)) <= 1


def test_the_test_sets_cost_counts_the_examples_held_out():
    assert DataConfig(dataset="digits").held_out_size == 300  # the 8×8 digits hold out at most 300
    assert DataConfig(dataset="digits", test_size=100).held_out_size == 100
    assert DataConfig(dataset="mnist1d", test_size=5000).held_out_size == 5000
    digits = RunConfig(model=MODELS["cnn"], data=DataConfig(dataset="digits"), train=TrainConfig(batch_size=50),
                       gamma=1.0, eta=0.1, seed=0)  # fmt: skip
    assert DC._work_per_eval(digits)[0]["test"] == pytest.approx(0.5 * 300 / 50)
