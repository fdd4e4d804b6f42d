"""The presets of `gamma-lab reproduce` (tasks.reproduce): each claim of Atanasov et al. (ICLR 2025,
arXiv:2410.04642) that gamma-lab checks, its sweeps at each scale, and how it is measured.

Scales: `ci` is the test suite's (seconds of training), `small` a laptop CPU in minutes, `paper` a
GPU-sized sweep (wider nets, longer budgets; its widths and step counts are gamma-lab's choice, not
copied from the paper's appendix). Tolerances are fixed here, before any measurement; a preset never
adjusts them to its result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from engine.analysis import (
    collapse_score,
    eta_max_bracket,
    eta_star,
    fit_power_law,
    grid_spacing,
    reparameterize,
    tail_mean,
)
from engine.toy import eta_max_theory, measure_eta_max
from tasks.reproduce import Measurement, Preset, Row, SweepData

# ----------------------------------------------------------------------------- shared helpers

SCALE_NAMES = ("ci", "small", "paper")


def _scales(make: Callable[[str], list[dict[str, Any]]]) -> dict[str, Callable[[], list[dict[str, Any]]]]:
    """Preset.scales from a function of the scale's name."""
    return {s: partial(make, s) for s in SCALE_NAMES}


def _spec(name: str, model: dict[str, Any], data: dict[str, Any], train: dict[str, Any],
          gammas: Sequence[float], eta: Any, seeds: Sequence[int] = (0,)) -> dict[str, Any]:
    base_train = {"loss": "mse", "dtype": "auto", "eval_points": 0, "metrics": []}
    return {"name": name, "model": {"arch": "mlp", "centered": True, **model}, "data": data,
            "train": base_train | train,
            "grid": {"gamma": [float(g) for g in gammas], "eta": eta, "seeds": list(seeds)}}  # fmt: skip


def _decades(lo: float, hi: float, step: float) -> list[float]:
    return [float(10.0**e) for e in np.arange(lo, hi + 1e-9, step)]


def _slope_row(quantity: str, gammas: np.ndarray, values: np.ndarray, spacing: float, paper: float,
               tolerance: float) -> tuple[Row, Any]:
    """A power-law slope of values(γ) as a table row (uncertainty: OLS ⊕ grid spacing) and its fit."""
    keep = np.isfinite(values) & (values > 0)
    if keep.sum() < 2:
        note = f"only {int(keep.sum())} γ with a value the grid brackets: widen the η grid"
        return Row(quantity, paper, math.nan, math.nan, tolerance, note=note), None
    fit = fit_power_law(gammas[keep], values[keep], y_spacing=spacing)
    span = f"γ = {gammas[keep].min():.3g} … {gammas[keep].max():.3g}"
    note = f"{fit.n} points, {span}, r² = {fit.r2:.3f}, grid part ± {fit.grid_stderr:.3g}"
    return Row(quantity, paper, fit.slope, fit.total_stderr, tolerance, note=note), fit


def _per_gamma(data: SweepData) -> dict[str, np.ndarray]:
    """Per γ of a sweep: η_max (largest stable η below the first divergence, any seed diverged = the
    cell diverged; NaN unless the grid brackets it) and η* (engine.analysis.eta_star of the tail
    statistic averaged over seeds; NaN when every cell diverged or η* sits on the grid's edge)."""
    runs = data.runs.assign(stat=data.statistic())
    gammas = np.sort(runs["gamma"].unique())
    maxes, stars = [], []
    for g in gammas:
        cells = runs[runs["gamma"] == g].groupby("eta").agg(
            diverged=("status", lambda s: bool((s == "diverged").any())),
            stat=("stat", lambda v: float(v.mean()) if v.notna().all() else math.nan),
        ).sort_index()
        etas = cells.index.to_numpy(dtype=float)
        lo, hi = eta_max_bracket(etas, cells["diverged"].to_numpy())
        maxes.append(lo if lo is not None and hi is not None else math.nan)
        found = eta_star(etas, cells["stat"].to_numpy())
        at_edge = found.index is None or found.index in (0, etas.size - 1)
        stars.append(math.nan if at_edge or found.value is None else found.value)
    return {"gamma": gammas, "eta_max": np.array(maxes), "eta_star": np.array(stars),
            "spacing": np.array(grid_spacing(runs["eta"].to_numpy(dtype=float)))}  # fmt: skip


def _loglog(title: str, traces: list[tuple[str, np.ndarray, np.ndarray, str]]) -> Any:
    """A log-log figure: traces of (name, x, y, mode)."""
    fig = go.Figure()
    for name, x, y, mode in traces:
        fig.add_trace(go.Scatter(x=x, y=y, name=name, mode=mode))
    fig.update_layout(title=title, xaxis_type="log", yaxis_type="log", xaxis_title="γ", yaxis_title="η",
                      height=420)
    return fig


def _scaling_rows(data: SweepData, side: str, paper: float, tolerance: float) -> tuple[list[Row], Any]:
    """η_max and η* slopes of one sweep against the paper's exponent, and their figure."""
    per = _per_gamma(data)
    depth = (data.spec.get("model") or {}).get("depth")
    rows, traces = [], []
    for key, label in (("eta_max", "η_max"), ("eta_star", "η*")):
        row, fit = _slope_row(f"{label} slope vs γ ({side}, L={depth})", per["gamma"], per[key],
                              float(per["spacing"]), paper, tolerance)
        rows.append(row)
        traces.append((f"{label} measured", per["gamma"], per[key], "markers+lines"))
        if fit is not None:
            traces.append((f"{label} fit: slope {fit.slope:.3f}", per["gamma"], fit.predict(per["gamma"]), "lines"))
    return rows, _loglog(f"η_max and η* against γ, L={depth} ({data.sweep_id})", traces)


# ----------------------------------------------------------------------------- deep-linear

TOY_SCALES: dict[str, dict[str, Any]] = {
    "ci": {"gammas": _decades(-2, 2, 1.0), "depths": (2, 3), "per_decade": 4, "refine": 4},
    "small": {"gammas": _decades(-3, 3, 0.5), "depths": (2, 3, 4), "per_decade": 8, "refine": 6},
    "paper": {"gammas": _decades(-3, 4, 0.25), "depths": (2, 3, 4, 6), "per_decade": 16, "refine": 10},
}


def _measure_toy(_sweeps: list[SweepData], scale: str) -> Measurement:
    """The chain's measured η_max (GD on the simulator, bisected) against the closed form
    2γ²/(L(1+γ)^(2−2/L)) and its two limits' slopes, 2 (γ ≤ 0.1) and 2/L (γ ≥ 10)."""
    cfg = TOY_SCALES[scale]
    gammas = np.array(cfg["gammas"])
    rows, figures = [], []
    for depth in cfg["depths"]:
        theory = eta_max_theory(gammas, depth)
        # an absolute η grid spanning the whole range: not built from the closed form it is checked against
        lo, hi = math.floor(math.log10(theory.min())) - 1, math.ceil(math.log10(theory.max())) + 1
        etas = np.array(_decades(lo, hi, 1.0 / cfg["per_decade"]))
        measured = measure_eta_max(gammas, depth, etas, refine=cfg["refine"])
        resolution = grid_spacing(etas) / 2 ** cfg["refine"]  # ln-width of the final bisection bracket
        dev = np.abs(np.log(measured / theory))
        worst = float(np.nanmax(dev)) if np.isfinite(dev).any() else math.nan
        note = f"{int(np.isfinite(dev).sum())} of {gammas.size} γ measured; bisection bracket {resolution:.2g} in ln η"
        rows.append(Row(f"max |ln(η_max measured / closed form)| (L={depth})", 0.0, worst,
                        resolution / math.sqrt(12.0), resolution + 0.01, note=note))
        for side, keep, paper in (("lazy, γ ≤ 0.1", gammas <= 0.1, 2.0), ("rich, γ ≥ 10", gammas >= 10, 2.0 / depth)):
            row, _ = _slope_row(f"η_max slope ({side}, L={depth})", gammas[keep], measured[keep], resolution,
                                paper, 0.1)
            rows.append(row)
        figures.append(_loglog(f"deep linear chain, L={depth}: η_max", [
            ("measured", gammas, measured, "markers"), ("closed form", gammas, theory, "lines")]))
    notes = ["The rich-side slope of the closed form approaches 2/L only as γ → ∞; at γ = 10…10^3 it is "
             "within the stated tolerance of 0.1."]
    return Measurement(rows, figures, notes)


DEEP_LINEAR = Preset(
    name="deep-linear",
    claim="the deep linear chain's η_max(γ) follows 2γ²/(L(1+γ)^(2−2/L)): ∝ γ² lazy, ∝ γ^(2/L) rich",
    paper_ref="the paper's scalar-chain toy model; engine/toy.py",
    scales={s: (lambda: []) for s in TOY_SCALES},  # no sweep: the simulator runs in measure
    measure=_measure_toy,
)

# ----------------------------------------------------------------------------- lazy-scaling

LAZY_TRAIN = {"batch_size": 32, "steps": 100, "dtype": "float64", "probe_size": 8}
LAZY_DATA = {"dataset": "teacher", "input_dim": 16, "n_classes": 2, "test_size": 16, "data_seed": 3}


def _lazy_specs(scale: str) -> list[dict[str, Any]]:
    if scale == "paper":
        return [_spec("reproduce-lazy-scaling-paper", {"width": 1024, "depth": 3, "activation": "relu"},
                      {"dataset": "mnist1d"}, {"batch_size": 128, "steps": 2000, "dtype": "float64"},
                      _decades(-4, -1, 0.5), {"from": 1e-9, "to": 10.0, "per_decade": 8}, seeds=(0, 1))]
    width, gammas, per_decade = (32, _decades(-3, -1, 1.0), 4) if scale == "ci" else (64, _decades(-3, -1, 0.5), 4)
    return [_spec(f"reproduce-lazy-scaling-{scale}", {"width": width, "depth": 3, "activation": "relu"}, LAZY_DATA,
                  LAZY_TRAIN, gammas, {"from": 1e-6, "to": 10.0 ** 0.75, "per_decade": per_decade})]


def _measure_lazy(sweeps: list[SweepData], _scale: str) -> Measurement:
    rows, fig = _scaling_rows(sweeps[0], "lazy, γ ≪ 1", 2.0, 0.3)
    notes = [f"η* reads the tail statistic (mean train loss over the last 10 % of the {sweeps[0].steps} steps); "
             "η* on the grid's edge and η_max not bracketed by the grid are left out of the fits."]
    return Measurement(rows, [fig], notes)


LAZY_SCALING = Preset(
    name="lazy-scaling",
    claim="for γ ≪ 1 the NTK scales as 1/γ², so η_max and η* both scale as γ² (slope 2)",
    paper_ref="lazy side of the γ–η phase diagram",
    scales=_scales(_lazy_specs),
    measure=_measure_lazy,
)

# ----------------------------------------------------------------------------- rich-scaling

RICH_DATA = {"dataset": "teacher", "input_dim": 16, "n_classes": 1, "test_size": 16, "data_seed": 1}


def _rich_specs(scale: str) -> list[dict[str, Any]]:
    if scale == "paper":
        return [_spec(f"reproduce-rich-scaling-L{d}-paper", {"width": 1024, "depth": d, "activation": "relu"},
                      {"dataset": "mnist1d"}, {"batch_size": 128, "steps": 10000},
                      _decades(1, 3, 0.25), {"from": 1e-1, "to": 1e4, "per_decade": 8}, seeds=(0, 1))
                for d in (2, 3, 4)]  # fmt: skip
    if scale == "ci":
        # Near γ = 10 the divergence edge is fuzzy: a cell just under it diverges or not with the last bits
        # of the arithmetic, which differ between CPUs' BLAS kernels. On a ¼-decade η grid with 3 γ one
        # such cell moved the L = 3 η_max slope from 0.625 (float64) to 0.5 (float32, an AVX2 CPU): a test
        # that passed on one machine was inconclusive on another. ⅛ decade and 5 γ bring one flipped
        # cell's effect on a slope to about 0.05, a third of the tolerance; float64 makes flips rare.
        width, steps, gammas, per_decade, dtype = 32, 600, _decades(1, 3, 0.5), 8, "float64"
    else:
        width, steps, gammas, per_decade, dtype = 64, 2000, _decades(1, 3, 0.5), 4, "auto"
    depths = (2, 3) if scale == "ci" else (2, 3, 4)
    return [_spec(f"reproduce-rich-scaling-L{d}-{scale}", {"width": width, "depth": d, "activation": "relu"},
                  RICH_DATA, {"batch_size": 64, "steps": steps, "dtype": dtype}, gammas,
                  {"from": 10.0 ** -0.5, "to": 1e4, "per_decade": per_decade}) for d in depths]  # fmt: skip


def _budget_tails(data: SweepData) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Per run that finished `done`: its step-0 loss, its tail statistic at the full budget T and at T/2
    (the mean of the last 10 % of the first T/2 steps): the same runs read at half the budget."""
    points = data.series("train_loss")
    done = set(data.runs.loc[data.runs["status"] == "done", "run_id"])
    first, full, half = {}, {}, {}
    for run_id, run in points.groupby("run_id"):
        if run_id not in done:
            continue
        values = run.sort_values("step")["value"].to_numpy()
        first[run_id], full[run_id] = float(values[0]), tail_mean(values)
        half[run_id] = tail_mean(values[: max(1, values.size // 2)])
    return first, full, half


def _eta_min(cells: pd.DataFrame) -> float:
    """The smallest η whose cell left the plateau (mean tail ≤ half its step-0 loss), when a smaller η of
    the grid did not: NaN when none left it or the smallest η already had (not bracketed)."""
    cells = cells.sort_index()
    escaped = (cells["tail"] <= 0.5 * cells["first"]).to_numpy()
    if not escaped.any() or escaped[0]:
        return math.nan
    return float(cells.index[int(np.argmax(escaped))])


def _eta_min_unbracketed(gammas: np.ndarray, tables: list[pd.DataFrame]) -> str:
    """Which γ have no bracketed η_min (see _eta_min) and why, in words ('' when every γ has one)."""
    below, above = [], []
    for g, cells in zip(gammas, tables, strict=True):
        escaped = (cells.sort_index()["tail"] <= 0.5 * cells.sort_index()["first"]).to_numpy()
        if not escaped.any():
            above.append(f"{g:.3g}")
        elif escaped[0]:
            below.append(f"{g:.3g}")
    eta_lo = min(float(t.index.min()) for t in tables) if tables else math.nan
    parts = ([f"γ = {', '.join(below)}: the grid's smallest η = {eta_lo:.3g} already left the plateau (η_min below "
              "the grid)"] if below else []) + (  # fmt: skip
        [f"γ = {', '.join(above)}: no η left the plateau within the budget"] if above else [])
    return "; not bracketed: " + "; ".join(parts) if parts else ""


def _budget_rows(data: SweepData) -> list[Row]:
    """η_min ∝ γ/T: its slope against γ at the full budget, and η_min(T/2)/η_min(T) (2 for ∝ 1/T);
    η*'s slope at T/2 beside T's (how much the budget moves it)."""
    first, full, half = _budget_tails(data)
    runs = data.runs.assign(first=data.runs["run_id"].map(first))
    depth = int((data.spec.get("model") or {}).get("depth", 3))
    spacing = grid_spacing(runs["eta"].to_numpy(dtype=float))
    gammas = np.sort(runs["gamma"].unique())
    mins: dict[str, list[float]] = {"full": [], "half": []}
    stars_half = []
    full_tables = []
    for g in gammas:
        for key, tails in (("full", full), ("half", half)):
            cells = runs[runs["gamma"] == g].assign(tail=runs["run_id"].map(tails)).groupby("eta")[["tail", "first"]]
            table = cells.agg(lambda v: float(v.mean()) if v.notna().all() else math.nan)
            mins[key].append(_eta_min(table))
            if key == "full":
                full_tables.append(table)
            if key == "half":
                found = eta_star(table.index.to_numpy(dtype=float), table["tail"].to_numpy())
                edge = found.index is None or found.index in (0, len(table) - 1)
                stars_half.append(math.nan if edge or found.value is None else found.value)
    row_min, _ = _slope_row(f"η_min slope vs γ (L={depth})", gammas, np.array(mins["full"]), spacing, 1.0, 0.2)
    row_min = replace(row_min, note=row_min.note + _eta_min_unbracketed(gammas, full_tables))
    ratio = np.array(mins["half"]) / np.array(mins["full"])
    ratio = ratio[np.isfinite(ratio)]
    median = float(np.median(ratio)) if ratio.size else math.nan
    # two grid reads, each uniform over one ln-spacing Δ: the ratio's ln has std Δ·√(2/12)
    row_ratio = Row(f"η_min(T/2) / η_min(T) (L={depth})", 2.0, median, median * spacing * math.sqrt(2 / 12), 0.6,
                    note=f"median over {ratio.size} γ; η_min ∝ 1/T gives 2; η grid step ×{math.exp(spacing):.3g}")
    row_star, _ = _slope_row(f"η* slope vs γ at T/2 (L={depth})", gammas, np.array(stars_half), spacing,
                             2.0 / depth, 0.15)
    return [row_min, row_ratio, replace(row_star, compare="info")]


def _measure_rich(sweeps: list[SweepData], _scale: str) -> Measurement:
    rows, figures = [], []
    for data in sweeps:
        depth = int((data.spec.get("model") or {}).get("depth", 3))
        r, fig = _scaling_rows(data, "rich, γ ≫ 1", 2.0 / depth, 0.15)
        rows += r + _budget_rows(data)
        figures.append(fig)
    notes = [f"Budget T = {sweeps[0].steps} steps; the same runs are also read at T/2 (the tail of their first half). "
             "The rich-side η* slope moves with the budget (issue 11 saw 0.60, 0.46, 0.60 at 500, 1000, 2000 steps): "
             "compare reports at one budget. η_min: the smallest η that leaves the plateau (tail loss below half "
             "the step-0 loss) within the budget."]
    return Measurement(rows, figures, notes)


RICH_SCALING = Preset(
    name="rich-scaling",
    claim="for γ ≫ 1, η* and η_max scale as γ^(2/L) (L = 2, 3, 4: slopes 1, 2/3, 1/2); the lower edge η_min ∝ γ/T",
    paper_ref="rich side of the γ–η phase diagram",
    scales=_scales(_rich_specs),
    measure=_measure_rich,
)

# ----------------------------------------------------------------------------- collapse

AXES = {"t": "t", "eta_t": "η·t", "eta_t_over_gamma": "η·t/γ"}
SMOOTH = 20  # steps in the running mean that finds the plateau escape (one batch is noisy)


def _collapse_specs(scale: str) -> list[dict[str, Any]]:
    """One sweep per activation: ReLU as in the paper's MLPs, and tanh (the engine's rich-side physics
    test): the escape time's γ exponent differs between them (tanh: about 1.6 at these γ)."""
    out = []
    for act in ("relu", "tanh"):
        model = {"width": 64, "depth": 3, "activation": act}
        name = f"reproduce-collapse-{act}-{scale}"
        if scale == "ci":
            train = {"batch_size": 64, "steps": 1200, "dtype": "float64"}
            out.append(_spec(name, model | {"width": 32}, RICH_DATA, train, [10.0, 30.0], [1.0, 3.0]))
        elif scale == "paper":
            out.append(_spec(name, model | {"width": 1024}, {"dataset": "mnist1d"}, {"batch_size": 128, "steps": 10000},
                             [10.0, 30.0, 100.0, 300.0], [0.5, 1.0, 2.0, 4.0]))
        else:
            out.append(_spec(name, model, RICH_DATA, {"batch_size": 128, "steps": 3000, "dtype": "float64"},
                             [10.0, 30.0, 100.0], [1.0, 2.0, 4.0]))
    return out


def _curves(data: SweepData) -> list[tuple[float, float, np.ndarray]]:
    """(γ, η, loss per step) of every run that finished `done`, seeds averaged per cell."""
    pts = data.series()
    done = data.runs[data.runs["status"] == "done"]
    out = []
    for (g, e), cell in done.groupby(["gamma", "eta"]):
        series = [pts[pts["run_id"] == rid].sort_values("step")["value"].to_numpy() for rid in cell["run_id"]]
        n = min(s.size for s in series)
        if n >= 2:
            out.append((float(g), float(e), np.mean([s[:n] for s in series], axis=0)))
    return out


def _escape_step(loss: np.ndarray, fraction: float = 0.5) -> float:
    """First step where the running mean of the loss is below `fraction` (half) of its first value
    (NaN if never: censored, the run still on the plateau at the budget's end)."""
    smooth = np.convolve(loss, np.ones(SMOOTH) / SMOOTH, mode="valid")
    below = np.flatnonzero(smooth < fraction * smooth[0])
    return float(below[0] + SMOOTH / 2) if below.size else math.nan  # the window's centre


def _measure_collapse(sweeps: list[SweepData], _scale: str) -> Measurement:
    rows: list[Row] = []
    figures: list[Any] = []
    notes = []
    for data in sweeps:
        r, f, note = _collapse_one(data)
        rows += r
        figures += f
        notes.append(note)
    return Measurement(rows, figures, notes + ["Each score compares only the τ range all curves share, shown beside "
                                               "it with the curve count."])


def _collapse_one(data: SweepData) -> tuple[list[Row], list[Any], str]:
    """The rows, figures and note of one sweep (one activation), each row named with the activation."""
    model = data.spec.get("model") or {}
    depth, act = int(model.get("depth", 3)), str(model.get("activation", ""))
    cells = _curves(data)
    rows: list[Row] = []
    figures = []
    scores: dict[str, float] = {}
    for kind, label in AXES.items():
        curves = []
        for g, e, loss in cells:
            t = np.arange(1, loss.size + 1, dtype=float)  # loss before update t-1: τ > 0 from the first point
            keep = np.isfinite(loss) & (loss > 0)
            curves.append((reparameterize(t, e, g, depth, kind)[keep], loss[keep]))
        try:
            score = collapse_score(curves)
        except ValueError as exc:
            rows.append(Row(f"collapse score in {label} ({act})", math.nan, math.nan, math.nan, 0.0, "info",
                            note=str(exc)))
            continue
        scores[kind] = score.score
        rows.append(Row(f"collapse score in {label} ({act})", math.nan, score.score, math.nan, 0.0, "info",
                        note=score.range_text()))
        fig = go.Figure([go.Scatter(x=tau[::5], y=loss[::5], mode="lines", name=f"γ={g:g}, η={e:g}")
                         for (tau, loss), (g, e, _) in zip(curves, cells, strict=True)])  # fmt: skip
        fig.update_layout(title=f"{act}: train loss against {label} (score {score.score:.3g})", xaxis_type="log",
                          yaxis_type="log", xaxis_title=label, yaxis_title="train loss", height=420)
        figures.append(fig)
    others = [scores[k] for k in ("t", "eta_t") if k in scores]
    ratio = scores["eta_t_over_gamma"] / min(others) if "eta_t_over_gamma" in scores and others else math.nan
    rows.append(Row(f"score(η·t/γ) / best score of t, η·t ({act})", 0.5, ratio, math.nan, 0.0, "at_most",
                    note="η·t/γ must collapse the curves at least twice as tightly as the best other axis"))
    rows += [replace(r, quantity=f"{r.quantity} ({act})") for r in _escape_rows(cells) + _escape_checks(cells)]
    return rows, figures, f"{act}: {len(cells)} curves (γ, η cells that finished), budget {data.steps} steps."


def _escape_rows(cells: list[tuple[float, float, np.ndarray]]) -> list[Row]:
    """The plateau escape time fitted as t_esc ∝ γ^a η^b: the paper's γ/η gives a = 1, b = −1."""
    esc = np.array([(g, e, _escape_step(loss)) for g, e, loss in cells]).reshape(-1, 3)
    esc = esc[np.isfinite(esc[:, 2])]
    labels = (("escape-time exponent of γ", 1.0), ("escape-time exponent of η", -1.0))
    design = np.column_stack([np.ones(len(esc)), np.log(esc[:, 0]), np.log(esc[:, 1])]) if len(esc) else None
    if design is None or len(esc) < 4 or np.linalg.matrix_rank(design) < 3:
        note = f"{len(esc)} curves left the plateau within the budget: need 4 spanning 2 γ and 2 η"
        return [Row(q, p, math.nan, math.nan, 0.25, note=note) for q, p in labels]
    coef, *_ = np.linalg.lstsq(design, np.log(esc[:, 2]), rcond=None)
    resid = np.log(esc[:, 2]) - design @ coef
    dof = len(esc) - 3
    cov = (float(resid @ resid) / dof) * np.linalg.inv(design.T @ design) if dof > 0 else None
    note = f"{len(esc)} curves; escape = first step the {SMOOTH}-step mean loss is below half its start"
    errs = np.sqrt(np.diag(cov)) if cov is not None else np.full(3, math.nan)
    return [Row(q, p, float(coef[i + 1]), float(errs[i + 1]), 0.25, note=note) for i, (q, p) in enumerate(labels)]


def _gamma_exponent(esc: np.ndarray) -> float:
    """The γ coefficient of log t_esc = c + a log γ + b log η over the rows (γ, η, t) with a finite t."""
    esc = esc[np.isfinite(esc[:, 2])]
    design = np.column_stack([np.ones(len(esc)), np.log(esc[:, 0]), np.log(esc[:, 1])])
    if len(esc) < 4 or np.linalg.matrix_rank(design) < 3:
        return math.nan
    return float(np.linalg.lstsq(design, np.log(esc[:, 2]), rcond=None)[0][1])


def _escape_checks(cells: list[tuple[float, float, np.ndarray]]) -> list[Row]:
    """Info rows that say where the γ exponent comes from: the runs censored at the budget (left out of
    the fit; refitted with the budget as their escape time, a lower bound), the exponent at other
    thresholds (a slower drop would cross a lower threshold later), and between neighbouring γ."""
    if not cells:
        return []
    budget = max(loss.size for _, _, loss in cells)
    esc = {f: np.array([(g, e, _escape_step(loss, f)) for g, e, loss in cells]) for f in (0.9, 0.7, 0.5, 0.3)}
    half = esc[0.5]
    censored = [(g, e) for g, e, t in half if not math.isfinite(t)]
    bounded = half.copy()
    bounded[~np.isfinite(bounded[:, 2]), 2] = budget
    names = ", ".join(f"γ={g:g} η={e:g}" for g, e in censored)
    rows = [Row("escape runs censored at the budget", math.nan, float(len(censored)), math.nan, 0.0, "info",
                note=(f"{names} still above half the start at step {budget}; left out of the fit. With the budget "
                      f"as their escape time (a lower bound) the γ exponent is {_gamma_exponent(bounded):.3g}")
                if censored else f"every curve left the plateau within {budget} steps")]  # fmt: skip
    others = ", ".join(f"{1 - f:.0%} drop: {_gamma_exponent(esc[f]):.3g} ({int(np.isfinite(esc[f][:, 2]).sum())} "
                       "curves)" for f in (0.7, 0.3))  # fmt: skip
    rows.append(Row("escape-time exponent of γ at a 10 % drop", math.nan, _gamma_exponent(esc[0.9]), math.nan, 0.0,
                    "info", note=f"the same fit at other thresholds: {others}"))
    gammas = np.unique(half[:, 0])
    local: list[tuple[str, float]] = []
    for g0, g1 in zip(gammas[:-1], gammas[1:], strict=True):
        ratios = [math.log(t1 / t0) / math.log(g1 / g0)
                  for _, e0, t0 in half[half[:, 0] == g0] for _, e1, t1 in half[half[:, 0] == g1]
                  if e0 == e1 and math.isfinite(t0) and math.isfinite(t1)]  # fmt: skip
        if ratios:
            local.append((f"γ {g0:g} → {g1:g}", float(np.median(ratios))))
    if local:
        pairs = "; ".join(f"{name}: {value:.3g}" for name, value in local)
        rows.append(Row("local escape-time exponent of γ, largest γ pair", math.nan, local[-1][1], math.nan, 0.0,
                        "info", note=f"median over η of ln(t_esc ratio)/ln(γ ratio) at half the start: {pairs}"))
    return rows


COLLAPSE = Preset(
    name="collapse",
    claim="at large γ the plateau escape time scales as γ/η, so loss curves collapse against η·t/γ, not t or η·t",
    paper_ref="rich-regime time rescaling",
    scales=_scales(_collapse_specs),
    measure=_measure_collapse,
)

# ----------------------------------------------------------------------------- catapult

EARLY = 0.1  # the early spike is looked for in the first 10 % of the steps


def _catapult_specs(scale: str) -> list[dict[str, Any]]:
    # the sharpness's trajectory is the measurement: every eval point asked for, whatever it costs
    train = {"batch_size": 32, "dtype": "float64", "eval_points": 15, "metrics": ["sharpness"], "probe_size": 64,
             "eval_budget": 0}
    model = {"width": 64, "depth": 3, "activation": "relu"}
    if scale == "paper":
        return [_spec("reproduce-catapult-paper", model | {"width": 1024}, {"dataset": "mnist1d"},
                      train | {"batch_size": 128, "steps": 5000}, [0.003, 0.01, 0.03],
                      {"from": 1e-6, "to": 1e-1, "per_decade": 16})]
    steps, per_decade = (300, 8) if scale == "ci" else (1000, 16)
    return [_spec(f"reproduce-catapult-{scale}", model, LAZY_DATA, train | {"steps": steps}, [0.01],
                  {"from": 10.0**-3.25, "to": 10.0**-1.5, "per_decade": per_decade})]


def _first(points: Any, run_id: str) -> np.ndarray:
    return points[points["run_id"] == run_id].sort_values("step")["value"].to_numpy()


LATE = 0.2  # the last 20 % of the steps: is an unsettled cell's loss still falling there?
DEAD = 0.01  # final sharpness below 1 % of 2/(N·η): the net's Hessian vanished (every ReLU off)


def _unsettled_kind(series: np.ndarray, sharpness_ratio: float) -> str:
    """Why a window cell ended above its initial loss, read from its recorded series: 'dead' when its
    final sharpness is under DEAD × 2/(N·η) (all ReLUs off: output and loss frozen, Hessian zero);
    'decreasing' when the log-loss still falls over the last LATE of the steps by more than two
    standard errors of its fitted slope (the budget was short); else 'stalled' (flat, and at the
    sharpness ratio reported: bouncing at the edge of stability)."""
    if math.isfinite(sharpness_ratio) and sharpness_ratio < DEAD:
        return "dead"
    late = np.log(np.maximum(series[int((1 - LATE) * series.size) :], 1e-300))
    if late.size < 3:
        return "stalled"
    t = np.arange(late.size, dtype=float) - (late.size - 1) / 2
    slope = float(t @ late / (t @ t))
    resid = late - late.mean() - slope * t
    stderr = math.sqrt(float(resid @ resid) / (late.size - 2) / float(t @ t))
    return "decreasing" if slope < -2 * stderr else "stalled"


def _unsettled_row(gamma: float, edge0: float, etas: list[float], settled: list[bool], kinds: list[str],
                   ratios: list[float], above: list[float], steps: int) -> Row:
    """An info row: how many window cells did not settle, and why (see _unsettled_kind); `above`: each
    cell's tail statistic over its initial loss."""
    late = [(e, k, r) for e, s, k, r in zip(etas, settled, kinds, ratios, strict=True) if not s]
    worse = [a for a, s in zip(above, settled, strict=True) if not s]
    counts = {k: sum(1 for _, kind, _ in late if kind == k) for k in ("dead", "decreasing", "stalled")}
    if not late:
        return Row(f"window cells not settled (γ={gamma:g})", math.nan, 0.0, math.nan, 0.0, "info",
                   note="every window cell ended below its initial loss")
    ok = [e / edge0 for e, s in zip(etas, settled, strict=True) if s]
    stalled = [r for _, k, r in late if k == "stalled" and math.isfinite(r)]
    parts = [f"{counts['dead']} dead (final sharpness under {DEAD:.0%} of 2/(N·η))",
             f"{counts['decreasing']} still decreasing (log-loss slope over the last {LATE:.0%} of the {steps} "
             "steps below −2 standard errors)", f"{counts['stalled']} stalled: flat"]  # fmt: skip
    if stalled:
        parts[-1] += f" at the edge, final sharpness {min(stalled):.2f}–{max(stalled):.2f} × 2/(N·η)"
    parts.append(f"their tail loss {min(worse):.2f}–{max(worse):.2f} × the initial")
    where = (f"; settled cells have η/η0 ≤ {max(ok):.3g}" if ok else "") + (
        f", unsettled {min(e for e, _, _ in late) / edge0:.3g}–{max(e for e, _, _ in late) / edge0:.3g}")
    return Row(f"window cells not settled (γ={gamma:g})", math.nan, float(len(late)), math.nan, 0.0, "info",
               note="; ".join(parts) + where)


def _measure_catapult(sweeps: list[SweepData], _scale: str) -> Measurement:
    """Per γ: λ0, the loss Hessian's top eigenvalue at init, sets the lazy edge of stability η0 =
    2/(N·λ0). Stable cells above η0 are the catapult window: their loss spikes early, the sharpness
    falls to 2/(N·η) or below, and the loss comes down again (tail below the initial loss)."""
    data = sweeps[0]
    width = int((data.spec.get("model") or {}).get("width", 1))
    loss, sharp = data.series("train_loss"), data.series("sharpness")
    runs = data.runs.assign(tail=data.statistic())
    rows: list[Row] = []
    figures = []
    for gamma, cells in runs.groupby("gamma"):
        cells = cells.sort_values("eta")
        lam0 = float(np.median(sharp[(sharp["step"] == 0) & sharp["run_id"].isin(cells["run_id"])]["value"]))
        edge0 = 2.0 / (width * lam0)
        diverged = cells.groupby("eta")["status"].agg(lambda s: bool((s == "diverged").any()))
        lo, hi = eta_max_bracket(diverged.index.to_numpy(dtype=float), diverged.to_numpy())
        window = cells[(cells["status"] == "done") & (cells["eta"] > edge0)]
        spikes, ratios, settled, kinds, above, fig = [], [], [], [], [], go.Figure()
        for _, run in window.iterrows():
            series = _first(loss, run["run_id"])
            early = series[: max(2, int(EARLY * series.size))]
            spikes.append(float(early.max() / series[0]))
            lam = _first(sharp, run["run_id"])
            ratios.append(float(lam[-1] * width * run["eta"] / 2.0) if lam.size else math.nan)
            settled.append(bool(run["tail"] < series[0]))
            kinds.append(_unsettled_kind(series, ratios[-1]))
            above.append(float(run["tail"] / series[0]))
            fig.add_trace(go.Scatter(y=series[::2], x=np.arange(series.size)[::2], mode="lines",
                                     name=f"η={run['eta']:.3g}"))
        fig.update_layout(title=f"catapult window at γ={gamma:g}: train loss", yaxis_type="log",
                          xaxis_title="step", yaxis_title="train loss", height=420)
        figures.append(fig)
        n = len(window)
        bracket = "not bracketed by the grid" if lo is None or hi is None else f"in [{lo:.3g}, {hi:.3g})"
        note = f"{n} stable cells above η0 = 2/(N·λ0) = {edge0:.3g} (λ0 = {lam0:.3g}); η_max {bracket}"
        spacing = grid_spacing(cells["eta"].to_numpy(dtype=float))
        reach = (lo / edge0) if lo is not None and hi is not None else math.nan
        rows += [
            Row(f"η_max / η0 at γ={gamma:g} (stable past the initial edge)", 1.0, reach,
                reach * spacing / math.sqrt(12), 0.0, "at_least", note=note),
            Row(f"median early spike, max loss / initial (γ={gamma:g})", 2.0,
                float(np.median(spikes)) if n else math.nan, math.nan, 0.0, "at_least",
                note=f"max over the first {EARLY:.0%} of the steps, {n} window cells"),
            Row(f"median final sharpness / (2/(N·η)) (γ={gamma:g})", 1.0,
                float(np.nanmedian(ratios)) if n else math.nan, math.nan, 0.25, "at_most",
                note="sharpness at the last eval step of each window cell against its edge of stability"),
            Row(f"fraction of window cells ending below their initial loss (γ={gamma:g})", 0.5,
                float(np.mean(settled)) if n else math.nan, math.nan, 0.0, "at_least",
                note=f"tail statistic against the step-0 loss; budget {data.steps} steps"),
            _unsettled_row(float(gamma), edge0, list(window["eta"].astype(float)), settled, kinds, ratios,
                           above, data.steps),
        ]  # fmt: skip
    notes = ["η0 is the edge of stability of the initial kernel: a lazy net without a catapult diverges above it."]
    return Measurement(rows, figures, notes)


CATAPULT = Preset(
    name="catapult",
    claim="small γ just under η_max: the loss spikes early, the sharpness falls to 2/(N·η) or below, then the loss "
    "converges (a stable window above the initial edge of stability)",
    paper_ref="lazy-side catapult window below η_max",
    scales=_scales(_catapult_specs),
    measure=_measure_catapult,
)

# ----------------------------------------------------------------------------- generalization

MATCH = 0.1  # "matches": the best loss at large γ within 10 % of γ = 1's (or lower)


def _generalization_specs(scale: str) -> list[dict[str, Any]]:
    model = {"width": 64, "depth": 3, "activation": "relu"}
    train = {"batch_size": 64, "steps": 1000}
    if scale == "ci":
        return [_spec("reproduce-generalization-ci", model | {"width": 32}, {"dataset": "mnist1d"},
                      train | {"steps": 400}, [1.0, 10.0], {"from": 1e-2, "to": 1e3, "per_decade": 2}, (0, 1))]
    if scale == "paper":
        return [_spec("reproduce-generalization-paper", model | {"width": 1024}, {"dataset": "mnist1d"},
                      {"batch_size": 128, "steps": 10000}, [0.1, 1.0, 10.0, 100.0],
                      {"from": 1e-3, "to": 1e3, "per_decade": 4}, (0, 1, 2))]
    return [_spec("reproduce-generalization-small", model, {"dataset": "mnist1d"}, train, [0.1, 1.0, 10.0, 100.0],
                  {"from": 1e-3, "to": 1e3, "per_decade": 2}, (0, 1, 2))]


def _best_per_gamma(data: SweepData) -> list[tuple[float, float, float, float]]:
    """(γ, best η, mean tail loss over seeds there, its standard error) per γ; the tail statistic of the
    fresh batches is an online test loss. Cells where a seed did not finish `done` take no part."""
    runs = data.runs.assign(tail=data.statistic())
    out = []
    for gamma, rows in runs.groupby("gamma"):
        cells = rows.groupby("eta")["tail"].agg(["mean", "std", "count", lambda v: v.notna().all()])
        cells = cells[cells.iloc[:, 3].astype(bool)]
        if cells.empty:
            out.append((float(gamma), math.nan, math.nan, math.nan))
            continue
        eta = float(cells["mean"].idxmin())
        best = cells.loc[eta]
        err = float(best["std"] / math.sqrt(best["count"])) if best["count"] > 1 else math.nan
        out.append((float(gamma), eta, float(best["mean"]), err))
    return out


def _measure_generalization(sweeps: list[SweepData], _scale: str) -> Measurement:
    data = sweeps[0]
    best = _best_per_gamma(data)
    base = [b for b in best if b[0] == 1.0]
    rows: list[Row] = []
    grid = data.runs["eta"].to_numpy(dtype=float)
    for gamma, eta, loss, err in best:
        edge = " (the grid's edge: the best η may lie beyond it)" if eta in (grid.min(), grid.max()) else ""
        rows.append(Row(f"best online loss at γ={gamma:g}", math.nan, loss, err, 0.0, "info",
                        note=f"at η = {eta:.3g}{edge}, mean of {data.runs['seed'].nunique()} seeds ± standard error"))
    for gamma, _, loss, err in (b for b in best if b[0] > 1.0):
        if not base:
            rows.append(Row(f"best loss at γ={gamma:g} / at γ=1", 1.0, math.nan, math.nan, MATCH, "at_most",
                            note="the sweep has no γ = 1 to compare with"))
            continue
        _, _, ref, ref_err = base[0]
        ratio = loss / ref
        rel = math.hypot(err / loss, ref_err / ref) if math.isfinite(err) and math.isfinite(ref_err) else math.nan
        rows.append(Row(f"best loss at γ={gamma:g} / at γ=1", 1.0, ratio, ratio * rel, MATCH, "at_most",
                        note=f"large γ matches (within {MATCH:.0%}) or beats γ = 1 at the same budget"))
    fig = go.Figure(go.Scatter(x=[b[0] for b in best], y=[b[2] for b in best], mode="markers+lines",
                               error_y={"type": "data", "array": [b[3] for b in best]}, name="best over η"))
    fig.update_layout(title="best online loss over η against γ", xaxis_type="log", xaxis_title="γ",
                      yaxis_title="tail train loss (online)", height=420)
    notes = [f"Budget: {data.steps} steps; the best η of each γ is a grid point (no refinement)."]
    return Measurement(rows, [fig], notes)


GENERALIZATION = Preset(
    name="generalization",
    claim="at a fixed budget and the best η for each γ, large γ matches or beats γ = 1 in online test loss",
    paper_ref="performance across γ at the optimal learning rate",
    scales=_scales(_generalization_specs),
    measure=_measure_generalization,
)

# ----------------------------------------------------------------------------- silent-alignment

ALIGNMENT = "alignment_ntk_centered"


def _alignment_specs(scale: str) -> list[dict[str, Any]]:
    # a deep linear network: the setting where silent alignment is derived (the NTK aligns with the task
    # during the plateau, before the loss drops); a ReLU MLP on MNIST-1D did not show it (issue 11)
    model = {"width": 64, "depth": 3, "activation": "linear"}
    train = {"batch_size": 64, "steps": 1500, "dtype": "float64", "eval_points": 60, "metrics": ["alignment"],
             "probe_size": 64}  # fmt: skip
    if scale == "ci":
        return [_spec("reproduce-silent-alignment-ci", model | {"width": 32}, RICH_DATA, train | {"steps": 600},
                      [30.0], [1.0, 3.0])]
    if scale == "paper":
        return [_spec("reproduce-silent-alignment-paper", model | {"width": 1024}, {"dataset": "mnist1d"},
                      train | {"batch_size": 128, "steps": 10000}, [30.0, 100.0, 300.0], [1.0, 3.0, 10.0])]
    return [_spec("reproduce-silent-alignment-small", model, RICH_DATA, train, [30.0, 100.0], [1.0, 3.0])]


def _half_crossing(steps: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """(step where `values` first crosses halfway from its first to its last value, linearly
    interpolated; half the gap between the two samples around it: the resolution). NaN if never."""
    mid = 0.5 * (values[0] + values[-1])
    rising = values[-1] > values[0]
    past = np.flatnonzero(values >= mid if rising else values <= mid)
    if not past.size or past[0] == 0:
        return math.nan, math.nan
    k = int(past[0])
    s0, s1, v0, v1 = steps[k - 1], steps[k], values[k - 1], values[k]
    step = s0 + (mid - v0) / (v1 - v0) * (s1 - s0) if v1 != v0 else s1
    return float(step), float(s1 - s0) / 2.0


def _measure_alignment(sweeps: list[SweepData], _scale: str) -> Measurement:
    """Per cell: the centered NTK–target alignment's half-rise step against the (20-step mean) train
    loss's half-drop step. Their ratio below 1 means the kernel aligned first: silent alignment."""
    data = sweeps[0]
    loss, align = data.series("train_loss"), data.series(ALIGNMENT)
    rows: list[Row] = []
    ratios, errs = [], []
    fig = go.Figure()
    for _, run in data.runs[data.runs["status"] == "done"].iterrows():
        a = align[align["run_id"] == run["run_id"]].sort_values("step")
        series = _first(loss, run["run_id"])
        if len(a) < 3 or series.size < 2 * SMOOTH:
            continue
        smooth = np.convolve(series, np.ones(SMOOTH) / SMOOTH, mode="valid")
        t_loss, _ = _half_crossing(np.arange(smooth.size) + SMOOTH / 2, smooth)
        t_align, resolution = _half_crossing(a["step"].to_numpy(dtype=float), a["value"].to_numpy())
        ratio, err = t_align / t_loss, resolution / t_loss
        ratios.append(ratio)
        errs.append(err)
        sign = "alignment first" if t_align < t_loss else "loss first"
        rows.append(Row(f"t_align / t_loss at γ={run['gamma']:g}, η={run['eta']:g}", math.nan, ratio, err, 0.0,
                        "info", note=f"half-rise {t_align:.0f}, half-drop {t_loss:.0f} steps: lag "
                        f"{t_loss - t_align:+.0f} ({sign})"))  # fmt: skip
        cell = f"γ={run['gamma']:g} η={run['eta']:g}"
        fig.add_trace(go.Scatter(x=a["step"], y=a["value"], mode="lines", name=f"alignment {cell}"))
        fig.add_trace(go.Scatter(x=np.arange(series.size), y=series / series[0], mode="lines", line={"dash": "dot"},
                                 name=f"loss / initial {cell}"))
    fig.update_layout(title=f"centered NTK alignment and train loss ({data.sweep_id})", xaxis_type="log",
                      xaxis_title="step", height=420)
    finite = [(r, e) for r, e in zip(ratios, errs, strict=True) if math.isfinite(r)]
    median = float(np.median([r for r, _ in finite])) if finite else math.nan
    rows.append(Row("median t_align / t_loss", 1.0, median, float(np.median([e for _, e in finite])) if finite
                    else math.nan, 0.0, "at_most", note=f"{len(finite)} cells; below 1: the kernel aligns before "
                    "the loss drops (silent alignment)"))  # fmt: skip
    notes = [f"Alignment: {ALIGNMENT} on a fixed probe batch at {data.spec.get('train', {}).get('eval_points')} "
             "log-spaced steps; its half-rise step is interpolated between them (± half their gap)."]
    return Measurement(rows, [fig], notes)


SILENT_ALIGNMENT = Preset(
    name="silent-alignment",
    claim="at large γ the kernel aligns with the task during the plateau, before the loss drops (silent alignment)",
    paper_ref="kernel-target alignment against loss in the rich regime",
    scales=_scales(_alignment_specs),
    measure=_measure_alignment,
)

from tasks.reproduce_adam import ADAM  # noqa: E402 - it imports the helpers above when it runs
from tasks.reproduce_same_function import SAME_FUNCTION  # noqa: E402 - below the helpers it reuses

PRESETS = (DEEP_LINEAR, LAZY_SCALING, RICH_SCALING, COLLAPSE, CATAPULT, GENERALIZATION, SILENT_ALIGNMENT, SAME_FUNCTION,
           ADAM)
