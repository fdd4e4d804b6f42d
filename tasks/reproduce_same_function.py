"""Preset `same-function` (issue 11, item 8): networks trained at different large γ end at similar
functions and representations, as similar as networks of one γ trained from different seeds.

Each large γ trains at η = C·γ^(2/L): the rich side's η_max and η* both scale as γ^(2/L), so one
constant C keeps every γ at the same place relative to its own edge (C = 10 is a few times below the
divergence of this MLP on MNIST-1D, C ≈ 30 still converges). One sweep per γ (a sweep's η grid is
shared by its γ), all with the metric "function": each run keeps its outputs f(x) (P, C) and the
centered Gram of its last hidden layer (P, P) on the first P = 256 test inputs (engine.function_probe).

Three dissimilarities between two runs a, b: 1 − linear CKA of their last-layer representations,
the relative L2 distance of their outputs, and the fraction of inputs where their argmax disagrees.
Each is averaged over three kinds of pairs: different seeds at one γ (the baseline: how much runs
differ when only their initialization does), different γ with the same seed, and different γ with
different seeds. The claim holds when the between-γ dissimilarity is at most TOLERANCE_RATIO times
the baseline (fixed here before any measurement): different γ then differ from each other about as
much as reseeding the same γ does. An info row gives 1 − CKA between seeds at initialization (random
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
    "paper": {"width": 1024, "steps": 10000, "batch": 128, "gammas": (10.0, 100.0, 1000.0, 10000.0),
              "seeds": (0, 1, 2, 3)},
}
MEASURES = (  # (key, what it is, how it is made from one pair's arrays)
    ("cka", "1 − linear CKA of the last hidden layer", lambda a, b: 1.0 - F.linear_cka(a["gram"], b["gram"])),
    ("distance", "relative L2 distance of the outputs", lambda a, b: F.output_distance(a["output"], b["output"])),
    ("argmax", "argmax disagreement of the outputs", lambda a, b: 1.0 - F.argmax_agreement(a["output"], b["output"])),
)
PAIRS = (("seeds", "different seeds, same γ"), ("gamma_same_seed", "different γ, same seed"),
         ("gamma_other_seed", "different γ, different seeds"))


def eta_for(gamma: float, depth: int = DEPTH) -> float:
    return C_ETA * gamma ** (2.0 / depth)


def _specs(scale: str) -> list[dict[str, Any]]:
    from tasks.reproduce_presets import _spec  # here, not at import: reproduce_presets lists this preset

    cfg = SCALES[scale]
    model = {"width": cfg["width"], "depth": DEPTH, "activation": "relu"}
    train = {"batch_size": cfg["batch"], "steps": cfg["steps"], "metrics": ["function"]}
    return [_spec(f"reproduce-same-function-g{g:g}-{scale}", model, {"dataset": "mnist1d"}, train, [g], [eta_for(g)],
                  cfg["seeds"]) for g in cfg["gammas"]]


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


def _measure(sweeps: list[SweepData], _scale: str) -> Measurement:
    runs, arrays = [], {}
    for data in sweeps:
        done = data.runs[data.runs["status"] == "done"]
        found = data.arrays()
        arrays.update(found)
        for _, r in done.iterrows():
            if r["run_id"] in found:
                runs.append((float(r["gamma"]), int(r["seed"]), r["run_id"], float(r.get("tail_train_loss", math.nan))))
    runs.sort()
    total = sum(len(d.runs) for d in sweeps)
    labels = [(g, s) for g, s, _, _ in runs]
    n = len(runs)
    gammas = sorted({g for g, _ in labels})
    rows: list[Row] = []
    matrices = {key: np.full((n, n), math.nan) for key, _, _ in MEASURES}
    values: dict[tuple[str, str], list[float]] = {}
    for i, j in itertools.product(range(n), range(n)):
        for key, _, fn in MEASURES:
            v = 0.0 if i == j else fn(arrays[runs[i][2]], arrays[runs[j][2]])
            matrices[key][i, j] = v
            if i < j:
                values.setdefault((key, _kind(labels[i], labels[j])), []).append(v)
    note_runs = f"{n} of {total} runs finished done with a snapshot, γ = {', '.join(f'{g:g}' for g in gammas)}"
    for key, what, _ in MEASURES:
        base, base_se = _mean_se(values.get((key, "seeds"), []))
        rows.append(Row(f"{what}: {PAIRS[0][1]} (baseline)", math.nan, base, base_se, 0.0, "info",
                        note=f"{len(values.get((key, 'seeds'), []))} pairs; {note_runs}"))
        for kind, words in PAIRS[1:]:
            mean, se = _mean_se(values.get((key, kind), []))
            ratio = mean / base if base > 0 else math.nan
            err = ratio * math.hypot(se / mean, base_se / base) if mean > 0 and base > 0 else math.nan
            note = f"{len(values.get((key, kind), []))} pairs, mean {mean:.3g} against the baseline's {base:.3g}"
            if not math.isfinite(ratio):
                note = f"no pairs to compare: need ≥ 2 γ and ≥ 2 seeds done; {note_runs}"
            rows.append(Row(f"{what}: {words} / baseline", 1.0, ratio, err, TOLERANCE_RATIO, "at_most", note=note))
    seeds = sorted({s for _, s in labels})
    init = _init_dissimilarity(sweeps[0], seeds) if sweeps else math.nan
    rows.append(Row("1 − linear CKA between seeds at initialization (random features)", math.nan, init, math.nan,
                    0.0, "info", note="what training made alike: compare with the baseline above"))
    for g in gammas:
        tails = [t for gg, _, _, t in runs if gg == g]
        rows.append(Row(f"tail train loss at γ={g:g} (η = {eta_for(g):.4g})", math.nan, float(np.nanmean(tails)),
                        float(np.nanstd(tails) / math.sqrt(len(tails))), 0.0, "info",
                        note=f"mean of {len(tails)} seeds; budget {sweeps[0].steps if sweeps else 0} steps"))
    names = [f"γ={g:g} s{s}" for g, s in labels]
    figures = [
        _heatmap(1.0 - matrices["cka"], names, "linear CKA of the last hidden layer, runs ordered by γ then seed"),
        _heatmap(matrices["distance"], names, "relative L2 distance of the outputs on the probe inputs"),
    ]
    notes = [
        f"η = {C_ETA:g}·γ^(2/{DEPTH}) for every γ (a fixed fraction of the rich side's η_max ∝ γ^(2/L)); "
        f"{sweeps[0].steps if sweeps else 0} steps, the same budget for every γ (the plateau lasts ∝ γ^(1−2/L), "
        "so the largest γ has trained least).",
        "Probe: the first 256 inputs of the held-out test set, the same for every run; linear CKA from centered Gram "
        "matrices (invariant to rotations and the scale of the features); output distance "
        "‖f_a − f_b‖ / sqrt((‖f_a‖² + ‖f_b‖²)/2).",
        f"Pass: between-γ dissimilarity ≤ {1 + TOLERANCE_RATIO:g} × the between-seed baseline (fixed in advance). "
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
