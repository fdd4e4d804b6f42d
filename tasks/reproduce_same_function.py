"""Preset `same-function` (issue 11, item 8): networks trained at different large γ end at similar
functions and representations, as similar as networks of one γ trained from different seeds.

Each large γ trains at η = C·γ^(2/L): the rich side's η_max and η* both scale as γ^(2/L), so one
constant C keeps every γ at the same place relative to its own edge (C = 10 is a few times below the
divergence of this MLP on MNIST-1D, C ≈ 30 still converges). The paper finds that large-γ nets
follow one trajectory up to a reparameterization of time, τ = η·t/γ. The verdict compares runs of one
budget T in steps (the same samples for all); beside it, for information, each larger γ also trains
for T·(γ/γ_min)^(1−2/L) steps, the same τ as γ_min at T. One sweep per (γ, budget) (a sweep's η grid
and budget are shared by its γ), all with the metric "function": each run keeps its outputs f(x)
(P, C) and the centered Gram of its last hidden layer (P, P) on the first P = 256 test inputs
(engine.function_probe).

Three dissimilarities between two runs a, b: 1 − linear CKA of their last-layer representations,
the relative L2 distance of their outputs, and the fraction of inputs where their argmax disagrees.
Each is averaged over three kinds of pairs: different seeds at one γ (the baseline: how much runs
differ when only their initialization does), different γ with the same seed, and different γ with
different seeds. The claim holds when the between-γ dissimilarity is at most TOLERANCE_RATIO times
the baseline: different γ then differ from each other about as much as reseeding the same γ does.
The tolerance was set once, from exploratory runs at these settings (ratios 1.0–1.3 between large γ,
about 5 between a large γ and γ = 1), to separate "like reseeding" from "another regime"; it has not
been changed since, and the report says so. An info row gives 1 − CKA between seeds at initialization (random
features): what the representations would share if training had not made them alike.
"""

from __future__ import annotations

import itertools
import math
from functools import partial
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch

from engine import function_probe as F
from engine.config import RunConfig
from tasks.reproduce import Measurement, Preset, Row, SweepData

C_ETA = 10.0  # η = C·γ^(2/L)
TOLERANCE_RATIO = 0.5  # pass: between-γ dissimilarity ≤ (1 + 0.5) × the between-seed baseline
DEPTH = 3
SCALES: dict[str, dict[str, Any]] = {
    "ci": {"width": 32, "steps": 600, "batch": 64, "gammas": (10.0, 100.0), "seeds": (0, 1, 2)},
    "small": {"width": 64, "steps": 2000, "batch": 64, "gammas": (10.0, 100.0, 1000.0), "seeds": (0, 1, 2, 3)},
    "paper": {"width": 1024, "steps": 10000, "batch": 128, "gammas": (10.0, 100.0, 1000.0), "seeds": (0, 1, 2, 3)},
}  # steps: the budget every γ trains for, and the smallest γ's in the same-τ comparison (steps_for)
MEASURES = (  # (key, what it is, how it is made from one pair's arrays)
    ("cka", "1 − linear CKA of the last hidden layer", lambda a, b: 1.0 - F.linear_cka(a["gram"], b["gram"])),
    ("distance", "relative L2 distance of the outputs", lambda a, b: F.output_distance(a["output"], b["output"])),
    ("argmax", "argmax disagreement of the outputs", lambda a, b: 1.0 - F.argmax_agreement(a["output"], b["output"])),
)
PAIRS = (("seeds", "different seeds, same γ"), ("gamma_same_seed", "different γ, same seed"),
         ("gamma_other_seed", "different γ, different seeds"))


def eta_for(gamma: float, depth: int = DEPTH) -> float:
    return C_ETA * gamma ** (2.0 / depth)


def steps_for(gamma: float, steps: int, gamma_min: float, depth: int = DEPTH) -> int:
    """The budget that reaches the same τ = η·t/γ as `steps` at gamma_min, with η = eta_for(γ)."""
    return int(round(steps * (gamma / gamma_min) ** (1.0 - 2.0 / depth)))


def _specs(scale: str) -> list[dict[str, Any]]:
    from tasks.reproduce_presets import _spec  # here, not at import: reproduce_presets lists this preset

    cfg = SCALES[scale]
    model = {"width": cfg["width"], "depth": DEPTH, "activation": "relu"}
    train = {"batch_size": cfg["batch"], "metrics": ["function"]}
    low = min(cfg["gammas"])
    same_t = [_spec(f"reproduce-same-function-g{g:g}-{scale}", model, {"dataset": "mnist1d"},
                    train | {"steps": cfg["steps"]}, [g], [eta_for(g)], cfg["seeds"]) for g in cfg["gammas"]]
    same_tau = [_spec(f"reproduce-same-function-g{g:g}-tau-{scale}", model, {"dataset": "mnist1d"},
                      train | {"steps": steps_for(g, cfg["steps"], low)}, [g], [eta_for(g)], cfg["seeds"])
                for g in cfg["gammas"] if g > low]
    return same_t + same_tau


def _kind(a: tuple[float, int], b: tuple[float, int]) -> str:
    """Which kind of pair two (γ, seed) labels make."""
    if a[0] == b[0]:
        return "seeds"
    return "gamma_same_seed" if a[1] == b[1] else "gamma_other_seed"


def _mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (pairs share runs, so the error is a rough lower bound)."""
    v = np.array([x for x in values if math.isfinite(x)])
    if not v.size:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan


def _init_dissimilarity(sweep: SweepData, seeds: list[int]) -> float:
    """Mean 1 − CKA between the seeds' last-layer features at initialization on the same probe inputs
    (γ only scales the readout, so it plays no part). NaN for data that needs files."""
    from engine.data import make_stream
    from engine.models import build_model

    spec = sweep.spec
    cfg = RunConfig.from_dict({k: spec[k] for k in ("model", "data", "train") if k in spec})
    if len(seeds) < 2 or cfg.data.dataset in ("cifar5m", "mnist1m", "npz"):
        return math.nan
    stream = make_stream(cfg.data, batch_size=cfg.train.batch_size, data_root=None, device="cpu",
                         dtype=torch.float32)
    x = stream.test_set().x
    x = x[: F.probe_size(x.shape[0])]
    model = build_model(cfg.model, stream.input_shape, stream.n_outputs)
    with torch.no_grad():
        grams = F.centered_gram(model.features(model.init(seeds, dtype=torch.float32, device="cpu"), x).double())
    grams_np = grams.numpy()
    return float(np.mean([1.0 - F.linear_cka(grams_np[i], grams_np[j])
                          for i, j in itertools.combinations(range(len(seeds)), 2)]))


def _heatmap(matrix: np.ndarray, labels: list[str], title: str) -> Any:
    fig = go.Figure(go.Heatmap(z=matrix, x=labels, y=labels, colorscale="Viridis"))
    fig.update_layout(title=title, height=520, yaxis_autorange="reversed")
    return fig


Run = tuple[float, int, str, float, int]  # (γ, seed, run id, tail train loss, steps)


def _collect(sweeps: list[SweepData]) -> tuple[list[Run], dict[str, dict[str, np.ndarray]], dict[int, int]]:
    """The runs that finished done with a snapshot, sorted by (γ, seed, steps); their arrays; how many runs
    (any status) each budget in steps has."""
    runs: list[Run] = []
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for data in sweeps:
        found = data.arrays()
        arrays.update(found)
        for _, r in data.runs[data.runs["status"] == "done"].iterrows():
            if r["run_id"] in found:
                runs.append((float(r["gamma"]), int(r["seed"]), str(r["run_id"]),
                             float(r.get("tail_train_loss", math.nan)), data.steps))
    totals: dict[int, int] = {}
    for d in sweeps:
        totals[d.steps] = totals.get(d.steps, 0) + len(d.runs)
    return sorted(runs), arrays, totals


def _compare(runs: list[Run], arrays: dict[str, dict[str, np.ndarray]]) -> tuple[dict[tuple[str, str], list[float]],
                                                                                 dict[str, np.ndarray]]:
    """Every pair's dissimilarities, grouped by (measure, kind of pair), and the full matrices."""
    n = len(runs)
    matrices = {key: np.zeros((n, n)) for key, _, _ in MEASURES}
    values: dict[tuple[str, str], list[float]] = {}
    for i, j in itertools.combinations(range(n), 2):
        kind = _kind(runs[i][:2], runs[j][:2])
        for key, _, fn in MEASURES:
            v = fn(arrays[runs[i][2]], arrays[runs[j][2]])
            matrices[key][i, j] = matrices[key][j, i] = v
            values.setdefault((key, kind), []).append(v)
    return values, matrices


def _ratio_rows(values: dict[tuple[str, str], list[float]], budget: str, compare: str, note_runs: str) -> list[Row]:
    """Per measure: the between-seed baseline (info) and each between-γ mean over it."""
    rows = []
    for key, what, _ in MEASURES:
        base, base_se = _mean_se(values.get((key, "seeds"), []))
        if compare != "info":  # the same-τ rows only give the ratios
            rows.append(Row(f"{what}: {PAIRS[0][1]} (baseline, {budget})", math.nan, base, base_se, 0.0, "info",
                            note=f"{len(values.get((key, 'seeds'), []))} pairs; {note_runs}"))
        for kind, words in PAIRS[1:]:
            mean, se = _mean_se(values.get((key, kind), []))
            ratio = mean / base if base > 0 else math.nan
            err = ratio * math.hypot(se / mean, base_se / base) if mean > 0 and base > 0 else math.nan
            note = (f"{len(values.get((key, kind), []))} pairs, mean {mean:.3g} against the baseline's {base:.3g}"
                    if math.isfinite(ratio) else f"no pairs to compare: need ≥ 2 γ and ≥ 2 seeds done; {note_runs}")
            rows.append(Row(f"{what}: {words} / baseline ({budget})", 1.0, ratio, err, TOLERANCE_RATIO, compare,
                            note=note))
    return rows


def _measure(sweeps: list[SweepData], _scale: str) -> Measurement:
    """The verdict reads the runs of one budget in steps (every run saw the same samples in the same
    order); the runs trained to the same τ are compared beside them, for information."""
    runs, arrays, total = _collect(sweeps)
    gammas = sorted({r[0] for r in runs})
    base_steps = min((r[4] for r in runs if r[0] == gammas[0]), default=0)
    same_t = [r for r in runs if r[4] == base_steps]
    same_tau = [r for r in runs if gammas and r[4] == steps_for(r[0], base_steps, gammas[0])]
    note_runs = (f"{len(same_t)} of the {total.get(base_steps, 0)} runs of {base_steps} steps done with a snapshot, "
                 f"γ = {', '.join(f'{g:g}' for g in sorted({r[0] for r in same_t}))}")
    values, matrices = _compare(same_t, arrays)
    rows = _ratio_rows(values, f"{base_steps} steps", "at_most", note_runs)
    if len({r[0] for r in same_tau}) > 1 and len({r[4] for r in same_tau}) > 1:
        tau_values, tau_matrices = _compare(same_tau, arrays)
        rows += _ratio_rows(tau_values, "same τ = η·t/γ", "info", "")
    else:
        tau_matrices = {}
    seeds = sorted({r[1] for r in runs})
    init = _init_dissimilarity(sweeps[0], seeds) if sweeps else math.nan
    rows.append(Row("1 − linear CKA between seeds at initialization (random features)", math.nan, init, math.nan,
                    0.0, "info", note="what training made alike: compare with the baselines above"))
    for g, steps in sorted({(r[0], r[4]) for r in runs}):
        tails = [r[3] for r in runs if (r[0], r[4]) == (g, steps)]
        rows.append(Row(f"tail train loss at γ={g:g}, {steps} steps", math.nan, float(np.nanmean(tails)),
                        float(np.nanstd(tails) / math.sqrt(len(tails))), 0.0, "info",
                        note=f"mean of {len(tails)} seeds; η = {eta_for(g):.4g}, "
                        f"τ = η·t/γ = {eta_for(g) * steps / g:.4g}"))
    names = [f"γ={r[0]:g} s{r[1]}" for r in same_t]
    figures = [
        _heatmap(1.0 - matrices["cka"], names, f"linear CKA of the last hidden layer at {base_steps} steps, "
                 "runs ordered by γ then seed"),
        _heatmap(matrices["distance"], names, f"relative L2 distance of the outputs at {base_steps} steps"),
    ]
    if tau_matrices:
        figures.append(_heatmap(1.0 - tau_matrices["cka"], [f"γ={r[0]:g} s{r[1]} ({r[4]} steps)" for r in same_tau],
                                "linear CKA of the last hidden layer at the same τ = η·t/γ"))
    tau_steps = ", ".join(f"{s} at γ={g:g}" for g, s in sorted({(r[0], r[4]) for r in same_tau}))
    notes = [
        f"η = {C_ETA:g}·γ^(2/{DEPTH}) for every γ (a fixed fraction of the rich side's η_max ∝ γ^(2/L)). The verdict "
        f"compares the runs of one budget, {base_steps} steps: every run saw the same samples in the same order, "
        "so only γ (with its η) and the seed differ. The plateau lasts ∝ γ^(1−2/L) steps, so there the larger γ "
        "stand at an earlier point of the paper's common trajectory in τ = η·t/γ.",
        f"Beside it, for information: runs trained to the same τ ({tau_steps} steps); the larger γ then take more "
        "steps and see more samples than the smaller.",
        "Probe: the first 256 inputs of the held-out test set, the same for every run; linear CKA from centered Gram "
        "matrices (invariant to rotations and the scale of the features); output distance "
        "‖f_a − f_b‖ / sqrt((‖f_a‖² + ‖f_b‖²)/2).",
        f"Pass: between-γ dissimilarity ≤ {1 + TOLERANCE_RATIO:g} × the between-seed baseline. This tolerance "
        "was set once from exploratory runs (ratios 1.0–1.3 between large γ, about 5 against γ = 1), not fixed "
        "before any measurement. "
        "Standard errors treat pairs as independent; they share runs, so the errors are optimistic.",
    ]
    return Measurement(rows, figures, notes)


SAME_FUNCTION = Preset(
    name="same-function",
    claim="networks trained at different large γ (η ∝ γ^(2/L)) end at similar functions and last-layer "
    "representations: they differ from each other about as much as two seeds of one γ do",
    paper_ref="rich-regime limit: γ-independent dynamics and solutions at large γ",
    scales={s: partial(_specs, s) for s in SCALES},
    measure=_measure,
)
