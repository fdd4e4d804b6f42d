"""engine.metrics on cases with known answers."""

import math

import pytest
import torch

from engine import metrics as M

D64 = torch.float64


def test_mse_is_mean_over_batch_and_classes():
    out = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]], dtype=D64)  # (K=2, B=2, C=2)
    target = torch.tensor([[0.0, 0.0], [0.0, 2.0]], dtype=D64)
    assert M.mse_loss(out, target).tolist() == pytest.approx([(1 + 4) / 4, 4 / 4])


def test_mse_of_zero_output_against_one_hot_is_one_over_classes():
    label = torch.arange(10)
    target = torch.nn.functional.one_hot(label, 10).to(D64)
    assert M.mse_loss(torch.zeros(3, 10, 10, dtype=D64), target).tolist() == pytest.approx([0.1] * 3)


def test_xent_of_uniform_output_is_log_classes_and_accuracy():
    label = torch.tensor([0, 2, 1])
    assert M.xent_loss(torch.zeros(2, 3, 4, dtype=D64), label).tolist() == pytest.approx([math.log(4)] * 2)
    out = torch.zeros(1, 3, 4, dtype=D64)
    out[0, 0, 0] = out[0, 1, 2] = out[0, 2, 3] = 1.0
    assert M.accuracy(out, label).item() == pytest.approx(2 / 3)
    # a confident correct logit: loss ≈ −log softmax
    out2 = torch.tensor([[[3.0, 0.0]]], dtype=D64)
    expected = -math.log(math.exp(3) / (math.exp(3) + 1))
    assert M.xent_loss(out2, torch.tensor([0])).item() == pytest.approx(expected)


def test_alignment_of_target_kernel_with_itself_is_one():
    y = torch.randn(12, 3, dtype=D64)
    k = (y @ y.T).unsqueeze(0)
    assert M.kernel_alignment(k, y).item() == pytest.approx(1.0)
    assert M.kernel_alignment(k, y, centered=True).item() == pytest.approx(1.0)
    # scale invariance
    assert M.kernel_alignment(5 * k, y).item() == pytest.approx(1.0)


def test_alignment_closed_form_and_centering():
    # Y = one-hot of two classes, 2 points each; K = I: ⟨I, YYᵀ⟩ = 4, ‖I‖ = 2, ‖YYᵀ‖ = sqrt(8)
    y = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=D64)
    k = torch.eye(4, dtype=D64).unsqueeze(0)
    assert M.kernel_alignment(k, y).item() == pytest.approx(4 / (2 * math.sqrt(8)))
    # a constant kernel is fully aligned uncentered with a constant target but has no centered part
    ones = torch.ones(4, 4, dtype=D64).unsqueeze(0)
    assert M.kernel_alignment(ones, torch.ones(4, 1, dtype=D64)).item() == pytest.approx(1.0)
    # centering removes the constant: HKH for K = I + 11ᵀ equals H, and H·HYYᵀH = HYYᵀH
    hyy = M._center(y @ y.T)
    expected = (torch.eye(4, dtype=D64) - 0.25) * hyy
    val = expected.sum() / (torch.linalg.norm(torch.eye(4, dtype=D64) - 0.25) * hyy.norm())
    assert M.kernel_alignment(k + ones, y, centered=True).item() == pytest.approx(val.item())


def test_feature_kernel_is_gram_matrix():
    phi = torch.randn(2, 5, 3, dtype=D64)
    k = M.feature_kernel(phi)
    assert k.shape == (2, 5, 5)
    torch.testing.assert_close(k[1], phi[1] @ phi[1].T)


def test_ntk_of_linear_model_is_classes_times_input_gram():
    # f_c(x) = Σ_j W_cj x_j + b_c: ∂f_c/∂W = e_c xᵀ, ∂f_c/∂b = e_c → Θ = C (x·x' + 1)
    c, d, p = 3, 4, 6
    params = {"w": torch.randn(2, c, d, dtype=D64), "b": torch.zeros(2, c, dtype=D64)}
    x = torch.randn(p, d, dtype=D64)

    def fn(pr, xs):
        return xs @ pr["w"].T + pr["b"]

    ntk = M.empirical_ntk(fn, params, x)
    expected = c * (x @ x.T + 1)
    torch.testing.assert_close(ntk, expected.expand(2, p, p))


def test_sharpness_of_quadratic_is_top_hessian_eigenvalue():
    # loss_k(θ) = ½ θᵀ A_k θ with known spectra
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=D64, generator=gen))
    spectra = [torch.tensor([5.0, 1, 0.5, 0.2, 0.1, 0.0]), torch.tensor([0.3, 2.5, 1.0, 0.2, 0.1, 0.05])]
    a = torch.stack([q @ torch.diag(s.to(D64)) @ q.T for s in spectra])  # (K, 6, 6)

    def loss(p):
        th = p["theta"]  # (K, 6)
        return 0.5 * torch.einsum("ki,kij,kj->k", th, a, th)

    params = {"theta": torch.randn(2, 6, dtype=D64, generator=gen)}
    eig, vec = M.top_hessian_eigenvalue(loss, params, iters=200, generator=gen)
    assert eig.tolist() == pytest.approx([5.0, 2.5], rel=1e-6)
    # warm start from the returned vector converges at once
    eig2, _ = M.top_hessian_eigenvalue(loss, params, iters=2, init=vec)
    assert eig2.tolist() == pytest.approx([5.0, 2.5], rel=1e-6)


def test_movement_is_relative_frobenius_change():
    w0 = torch.ones(2, 3, 4, dtype=D64)
    w = w0.clone()
    w[1] += 0.5
    assert M.movement(w, w0).tolist() == pytest.approx([0.0, 0.5])
