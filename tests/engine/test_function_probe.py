"""engine.function_probe: linear CKA and output distances on closed forms, the centered Gram against the
direct H K H, and the trainer's opt-in snapshot against a single run trained by the slow reference path."""

import numpy as np
import pytest
import torch

from engine import function_probe as F
from engine.config import ConfigError, TrainConfig
from engine.trainer import train_on_stream
from tests.engine.test_trainer_ensemble import SHAPES, SyntheticStream, make_configs, single_run_reference

D64 = torch.float64


def _features(p=40, f=12, seed=0):
    return np.random.default_rng(seed).standard_normal((p, f))


def test_centered_gram_is_h_k_h():
    x = torch.as_tensor(_features()) + 3.0  # an offset that only centering removes
    p = x.shape[0]
    h = torch.eye(p, dtype=D64) - torch.full((p, p), 1.0 / p, dtype=D64)
    direct = h @ (x @ x.T) @ h
    torch.testing.assert_close(F.centered_gram(x), direct, rtol=1e-12, atol=1e-10)
    batched = F.centered_gram(torch.stack([x, 2 * x]))  # (K, P, F) → (K, P, P)
    torch.testing.assert_close(batched[1], 4 * direct, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(F.center(x @ x.T), direct, rtol=1e-12, atol=1e-9)


def test_cka_is_one_under_rotation_and_scale_and_matches_the_feature_space_form():
    x = _features()
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((12, 12)))  # orthogonal
    assert F.linear_cka(x @ x.T, (x @ q) @ (x @ q).T) == pytest.approx(1.0, abs=1e-12)
    assert F.linear_cka(x @ x.T, 7.0 * x @ x.T) == pytest.approx(1.0, abs=1e-12)
    assert F.linear_cka(x @ x.T, (x + 5.0) @ (x + 5.0).T) == pytest.approx(1.0, abs=1e-12)  # a shift: centered away
    # Kornblith et al.'s feature-space form ‖YᵀX‖² / (‖XᵀX‖ ‖YᵀY‖) of centered X, Y
    y = _features(f=7, seed=2)
    xc, yc = x - x.mean(0), y - y.mean(0)
    closed = np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert F.linear_cka(x @ x.T, y @ y.T) == pytest.approx(closed, rel=1e-12)
    assert 0.0 < closed < 0.9  # two unrelated representations are far from 1
    assert F.linear_cka(x @ x.T, np.ones((40, 40))) != F.linear_cka(x @ x.T, np.ones((40, 40)))  # NaN: constant
    with pytest.raises(ValueError, match="linear_cka"):
        F.linear_cka(x @ x.T, np.eye(3))


def test_output_distance_and_argmax_agreement():
    f = _features(p=30, f=4)
    assert F.output_distance(f, f) == 0.0
    assert F.output_distance(f, -f) == pytest.approx(2.0)  # ‖2f‖ / ‖f‖
    assert F.output_distance(f, 3 * f) == pytest.approx(2 / np.sqrt(5))  # ‖2f‖ / sqrt((1 + 9)/2)‖f‖
    assert F.argmax_agreement(f, 2 * f + 1.0) == 1.0
    assert F.argmax_agreement(f, -f) == 0.0 or F.argmax_agreement(f, -f) < 0.5
    assert F.argmax_agreement(f[:, :1], -f[:, :1]) == 0.0  # one output: the sign
    assert F.probe_size(1000) == 256 and F.probe_size(32) == 32


def test_function_is_an_opt_in_metric_that_keeps_default_run_ids():
    assert "function" not in TrainConfig().metrics
    assert TrainConfig(metrics=("test", "function")).metrics == ("test", "function")
    with pytest.raises(ConfigError, match="train.metrics"):
        TrainConfig(metrics=("functions",))


def test_trainer_keeps_the_final_function_only_when_asked_and_it_matches_a_single_run():
    cells = [(10.0, 0.05, 0), (10.0, 0.05, 1), (10.0, 1e6, 2)]  # the third diverges: no snapshot
    steps = 7
    plain = train_on_stream(make_configs("mlp", cells, steps=steps), SyntheticStream(SHAPES["mlp"]), flush_every=3)
    assert all(r.arrays == {} for r in plain)
    configs = make_configs("mlp", cells, steps=steps, metrics=("function",))
    stream = SyntheticStream(SHAPES["mlp"])
    results = train_on_stream(configs, stream, flush_every=3)
    assert [r.status for r in results] == ["done", "done", "diverged"]
    assert results[2].arrays == {}
    x = stream.test_set().x  # 32 inputs: P = 32
    for cfg, r in zip(configs[:2], results[:2], strict=True):
        assert set(r.arrays) == {"output", "gram"}
        assert r.arrays["output"].shape == (32, 3) and r.arrays["gram"].shape == (32, 32)
        assert r.arrays["output"].dtype == np.float32 and r.arrays["gram"].dtype == np.float32
        _, params = single_run_reference(cfg, steps, SHAPES["mlp"])
        from engine.models import build_model

        model = build_model(cfg.model, SHAPES["mlp"], 3)
        init = model.init([cfg.seed], dtype=D64)
        p0 = {n: t[0] for n, t in init.items()}
        out = model.output_one(params, p0, x, torch.tensor(cfg.gamma, dtype=D64))  # (P, C)
        feats = model.forward_one(params, x)[1]  # (P, N)
        np.testing.assert_allclose(r.arrays["output"], out.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r.arrays["gram"], F.centered_gram(feats).numpy(), rtol=1e-5, atol=1e-5)
    cancelled = train_on_stream(configs[:2], SyntheticStream(SHAPES["mlp"]), flush_every=3, should_cancel=lambda: True)
    assert all(r.status == "cancelled" and r.arrays == {} for r in cancelled)
