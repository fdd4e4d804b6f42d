"""Rich-side physics on the real engine: the plateau escape time scales as γ/η (design.md §2), so
loss curves at large γ and one η collapse when plotted against τ = η·t/γ, and not against t.

An L=3 tanh MLP of width 64 on the teacher stream at γ = 10, 30, 100 and η = 1, all three as one
float64 ensemble. At fixed η the γ = 100 net stays on its plateau about ten times longer than the
γ = 10 one; `engine.analysis.collapse_score` (mean across-curve std of ln loss on a common τ grid)
must drop by more than half when t is replaced by η·t/γ. (η·t scores the same as t here: one η.)
"""

from __future__ import annotations

import numpy as np

from engine.analysis import collapse_score, reparameterize
from engine.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from engine.trainer import MetricBatch, train_ensemble

GAMMAS = (10.0, 30.0, 100.0)
ETA = 1.0


def test_large_gamma_curves_collapse_on_eta_t_over_gamma() -> None:
    model = ModelConfig(arch="mlp", width=64, depth=3, activation="tanh")
    data = DataConfig(dataset="teacher", input_dim=16, n_classes=1, test_size=16, data_seed=1)
    train = TrainConfig(batch_size=128, steps=2000, dtype="float64", eval_points=0, metrics=())
    configs = [RunConfig(model=model, data=data, train=train, gamma=g, eta=ETA, seed=0) for g in GAMMAS]
    series: dict[int, list[np.ndarray]] = {i: [] for i in range(len(configs))}

    def keep(batch: MetricBatch) -> None:
        for i in range(len(batch.run_ids)):
            _, _, values = batch.for_run(i)
            series[i].append(values)

    results = train_ensemble(configs, on_metrics=keep)
    assert [r.status for r in results] == ["done"] * len(GAMMAS)
    losses = [np.concatenate(series[i]) for i in range(len(configs))]
    t = np.arange(1, train.steps + 1, dtype=float)  # loss before update t-1: τ > 0 from the first point

    # the escape is later for larger γ: the mean loss over the first half rises with γ
    early = [float(np.mean(loss[: train.steps // 2])) for loss in losses]
    assert early == sorted(early), early

    def score(kind: str) -> float:
        curves = [(reparameterize(t, ETA, g, 3, kind), loss) for g, loss in zip(GAMMAS, losses, strict=True)]
        return collapse_score(curves).score

    by_t, by_tau = score("t"), score("eta_t_over_gamma")
    assert by_tau < 0.5 * by_t, f"collapse score under η·t/γ {by_tau:.3f} vs under t {by_t:.3f}"
