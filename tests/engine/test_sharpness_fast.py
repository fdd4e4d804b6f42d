"""engine.metrics.top_hessian_eigenvalue_lanczos against the exact top eigenvalue of each member's
dense probe-loss Hessian, float64, on a tiny MLP, at init and at later eval steps of a training run
(warm-started from the previous eval's vectors), to 1e-6 relative, and the trainer's recorded
sharpness to 1e-3; against power iteration; a member's result independent of the others."""

import pytest
import torch

from engine import metrics as M
from engine.trainer import _Evaluator, _output, train_on_stream
from tests.engine.test_trainer_compaction import configs_of
from tests.engine.test_trainer_ensemble import SHAPES, SyntheticStream

CELLS = [(0.5, 0.05, 0), (1.0, 0.2, 1), (2.0, 0.5, 0), (1.0, 0.1, 3)]


def _exact_top(ev: _Evaluator, ens) -> torch.Tensor:
    """max eigenvalue of each member's dense Hessian of the probe loss (θ0's readout held fixed)."""
    px, py, pl = ev.probe.x, ev.probe.target, ev.probe.label
    g0 = ev._readout0(ens, "probe", px)
    names = list(ens.params)
    params = {n: ens.params[n].detach().clone() for n in names}
    sizes = [params[n][0].numel() for n in names]
    out = []
    for k in range(ens.gamma.shape[0]):
        flat0 = torch.cat([params[n][k].reshape(-1) for n in names])

        def loss_k(flat, _k=k):
            p = {}
            for n, piece in zip(names, torch.split(flat, sizes), strict=True):
                rows = list(params[n].unbind(0))
                rows[_k] = piece.view(params[n].shape[1:])
                p[n] = torch.stack(rows)
            return M.loss_fn(ev.loss_kind, _output(ev.model, p, g0, px, ens.gamma), py, pl)[_k]

        with torch.enable_grad():
            h = torch.autograd.functional.hessian(loss_k, flat0, vectorize=True)
        out.append(torch.linalg.eigvalsh(h)[-1])
    return torch.stack(out)


def _probe_loss(ev: _Evaluator, ens):
    px, py, pl = ev.probe.x, ev.probe.target, ev.probe.label
    g0 = ev._readout0(ens, "probe", px)
    return lambda p: M.loss_fn(ev.loss_kind, _output(ev.model, p, g0, px, ens.gamma), py, pl)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mlp"])  # the CNN case ran past 4 minutes here: not yet included
def test_lanczos_matches_the_dense_hessian_at_init_and_after_training(arch, monkeypatch):
    """At every eval of a training run (at init cold, then warm-started from the previous eval's
    vectors), on the trainer's own probe loss: Lanczos matches the dense Hessian's top eigenvalue to
    1e-6 relative."""
    original = _Evaluator._sharpness
    seen = []
    state = {"vec": None}

    def checked(self, ens, start, cold):
        value, vectors = original(self, ens, start, cold)
        gen = torch.Generator().manual_seed(0)
        warm = state["vec"] is not None
        top, state["vec"], _ = M.top_hessian_eigenvalue_lanczos(
            _probe_loss(self, ens), ens.params, 400, state["vec"], gen, tol=1e-9
        )
        seen.append((top, _exact_top(self, ens), warm, value))
        return value, vectors

    monkeypatch.setattr(_Evaluator, "_sharpness", checked)
    configs = configs_of(arch, CELLS[:2], steps=20, metrics=("sharpness",), eval_points=3)
    train_on_stream(configs, SyntheticStream(SHAPES[arch]), flush_every=10)
    assert len(seen) >= 3 and not seen[0][2] and all(s[2] for s in seen[1:])  # init cold, then warm
    for top, exact, _, recorded in seen:
        assert torch.isfinite(exact).all()
        assert top.tolist() == pytest.approx(exact.tolist(), rel=1e-6)
        # what the trainer records (its own tolerance, hand-written products for the MLP): within 1e-3
        assert recorded.tolist() == pytest.approx(exact.tolist(), rel=1e-3)


def test_lanczos_is_exact_where_the_power_iteration_is_not_with_the_same_products():
    # a spectrum with λ₂/λ₁ = 0.95: the power iteration (the trainer's former 20 products) is
    # visibly off; Lanczos with at most as many products is within 1e-6
    gen = torch.Generator().manual_seed(0)
    n = 40
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=gen))
    spectrum = torch.linspace(0.0, 0.95, n - 1, dtype=torch.float64).tolist() + [1.0]
    a = q @ torch.diag(torch.tensor(spectrum, dtype=torch.float64)) @ q.T

    def loss(p):
        th = p["theta"]
        return 0.5 * torch.einsum("ki,ij,kj->k", th, a, th)

    params = {"theta": torch.randn(1, n, dtype=torch.float64, generator=gen)}
    cap = 20
    power, _ = M.top_hessian_eigenvalue(loss, params, cap, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(1)
    eig, vec, used = M.top_hessian_eigenvalue_lanczos(loss, params, cap, generator=gen, tol=1e-6)
    assert abs(power.item() - 1.0) > 1e-3
    assert eig.item() == pytest.approx(1.0, rel=1e-6) and used <= cap
    # warm-started from its Ritz vector it stops sooner
    eig2, _, used2 = M.top_hessian_eigenvalue_lanczos(loss, params, cap, init=vec, tol=1e-6)
    assert eig2.item() == pytest.approx(1.0, rel=1e-6) and used2 < used


def test_lanczos_gives_nan_for_a_diverged_member_and_the_rest_unharmed():
    a = torch.diag(torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64))

    def loss(p):
        th = p["theta"]
        return 0.5 * torch.einsum("ki,ij,kj->k", th, a, th) * torch.tensor([1.0, float("nan")], dtype=th.dtype)

    params = {"theta": torch.ones(2, 3, dtype=torch.float64)}
    eig, _, _ = M.top_hessian_eigenvalue_lanczos(loss, params, 10, generator=torch.Generator().manual_seed(0))
    assert eig[0].item() == pytest.approx(3.0, rel=1e-9) and torch.isnan(eig[1])


def test_a_members_eigenvalue_does_not_depend_on_the_other_members():
    # member 0 converges at once (a wide gap), member 1 needs many products (a narrow one): member 0's
    # eigenvalue and vector are the same bits alone as beside member 1 (units are packed differently,
    # and dead members leave the batch: each member's result must be its own)
    n = 30
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=gen))
    easy = q @ torch.diag(torch.tensor([0.1] * (n - 1) + [1.0], dtype=torch.float64)) @ q.T
    hard = q @ torch.diag(torch.linspace(0.0, 0.97, n, dtype=torch.float64)) @ q.T
    hard[-1, -1] += 0.03
    mats = torch.stack([easy, hard])

    def loss(p):
        th = p["theta"]
        return 0.5 * torch.einsum("ki,kij,kj->k", th, mats[: th.shape[0]], th)

    start = torch.randn(2, n, dtype=torch.float64, generator=gen)
    both, vec_both, used = M.top_hessian_eigenvalue_lanczos(loss, {"theta": start}, 30, {"theta": start}, tol=1e-6)
    alone, vec_alone, used_alone = M.top_hessian_eigenvalue_lanczos(
        loss, {"theta": start[:1]}, 30, {"theta": start[:1]}, tol=1e-6
    )
    assert used_alone < used  # member 1 kept the products going
    assert both[0].item() == alone[0].item() and both[0].item() == pytest.approx(1.0, rel=1e-9)
    assert torch.equal(vec_both["theta"][0], vec_alone["theta"][0])


def test_products_restricted_to_the_open_members_change_no_bit_and_compute_fewer():
    # the MLP's hand-written product, restricted to the members not done yet (restrict): every member's
    # eigenvalue and vector are the same bits as with every product on the whole ensemble, and the
    # slow members' last products compute only them
    arch = "mlp"
    configs = configs_of(arch, CELLS * 3, steps=1)
    from engine.models import build_model

    model = build_model(configs[0].model, SHAPES[arch], 3)
    params, _ = model.init_pair([c.seed for c in configs], dtype=torch.float64)
    k = len(configs)
    gamma = torch.tensor([c.gamma for c in configs], dtype=torch.float64)
    batch = SyntheticStream(SHAPES[arch], batch_size=16).next_batch()
    with torch.no_grad():  # members apart from θ0, each differently, so that they converge at different steps
        for p in params.values():
            p.add_(0.3 * torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(2)))

    def build(rows=None):
        pick = params if rows is None else {n: v[rows] for n, v in params.items()}
        g = gamma if rows is None else gamma[rows]
        return model.hvp_operator(pick, batch.x, None, g, "mse", batch.target, batch.label)

    computed = []

    def restrict(rows):
        computed.append(len(rows))
        return build(rows)

    gen = torch.Generator().manual_seed(3)
    start = {n: torch.randn(v.shape, dtype=v.dtype, generator=gen) for n, v in params.items()}
    full = M.top_hessian_eigenvalue_lanczos(None, params, 40, start, tol=1e-6, hvp=build())
    part = M.top_hessian_eigenvalue_lanczos(None, params, 40, start, tol=1e-6, hvp=build(), restrict=restrict)
    assert computed and computed[-1] < k / 2  # the last products ran on fewer than half the members
    assert torch.equal(full[0], part[0]) and full[2] == part[2]
    assert all(torch.equal(full[1][n], part[1][n]) for n in params)
