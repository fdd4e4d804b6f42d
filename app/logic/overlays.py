"""Time-reparameterized overlays: which time variable collapses the loss curves, and by how much."""

from __future__ import annotations

import pandas as pd

from engine import analysis

TIME_VARIABLES = {"t": "t", "eta_t": "η·t", "eta_t_over_gamma": "η·t/γ",
                  "eta_t_over_gamma_2_over_L": "η·t/γ^(2/L)"}


def no_runs_message(mode: str, n_runs: int, picked: int) -> str:
    """The line a trajectories/overlays page shows in place of a chart when its selection holds no run:
    in the hand-picked mode before any run is picked, say to pick runs (there may be plenty)."""
    if mode == "pick" and picked == 0 and n_runs > 0:
        return f"Pick runs in the box above ({n_runs} in this sweep) to draw them."
    if n_runs == 0:
        return "This sweep has no runs yet."
    return "No finished runs to show yet."


def collapse_with_reason(frame: pd.DataFrame) -> tuple[float | None, str]:
    """(score, "") or (None, why there is no score) — the table says why instead of showing "None"."""
    found, why = collapse_details(frame)
    return (found.score if found is not None else None), why


def collapse_details(frame: pd.DataFrame) -> tuple[analysis.CollapseScore | None, str]:
    """The whole collapse result (score, the shared τ range, the curve count, the drop in that range),
    or None and why there is none."""
    curves = [(part["x"].to_numpy(dtype=float), part["value"].to_numpy(dtype=float))
              for _, part in frame.sort_values("x").groupby("run_id", sort=False)]
    curves = [(x, y) for x, y in curves if ((x > 0) & (y > 0)).sum() >= 2]
    if len(curves) < 2:
        return None, "fewer than 2 curves with positive values"
    try:
        return analysis.collapse_score(curves), ""
    except ValueError as exc:
        if "do not overlap" in str(exc):
            return None, "no common range: the curves do not overlap on this time axis"
        return None, str(exc)


def score_table(scored: dict[str, tuple[float | None, str]], best: str | None,
                ranges: dict[str, str] | None = None) -> pd.DataFrame:
    """The Overlays page's table: one row per time variable with its score, whether it is the best,
    the τ range the score compares with its curve count and drop (`ranges`, by variable), and why a
    score is missing. A score over a range that holds only the plateau says little (issue 11)."""
    table = {
        "time variable": list(scored),
        "collapse score (lower = tighter)": [score for score, _ in scored.values()],
        "best": [name == best for name in scored],
    }
    if ranges is not None:
        table["shared range"] = [ranges.get(name, "") for name in scored]
    table["note"] = [why for _, why in scored.values()]
    return pd.DataFrame(table)


def default_gamma_range(gammas: list[float]) -> tuple[float, float]:
    """The rich side (γ > 1) when the runs reach it, else every γ: only large-γ curves are expected to
    collapse in η·t/γ, and mixing lazy γ along the ridge made the score pick t (issue 11)."""
    rich = [g for g in gammas if g > 1.0]
    pool = rich if len(rich) >= 2 else gammas
    return min(pool), max(pool)


def best_time_variable(scores: dict[str, float | None]) -> str | None:
    """The choice with the lowest (tightest) collapse score."""
    usable = {k: v for k, v in scores.items() if v is not None}
    return min(usable, key=lambda k: usable[k]) if usable else None


def rescale_time(frame_t: pd.DataFrame, depth: pd.Series, key: str) -> pd.DataFrame:
    """An overlay frame for the named time variable `key`, from the frame with x = t.

    Every named variable is t times a per-run constant (η, η/γ, η/γ^(2/L)), so one query with x = t
    serves all four: the overlays page asks storage once instead of once per variable (at 10,000
    runs each query scans the points table). `frame_t`: run_id, x (= t), value, gamma, eta, ...;
    `depth`: L per run_id."""
    if key not in TIME_VARIABLES:
        raise ValueError(f"x: must be one of {', '.join(TIME_VARIABLES)} (got {key!r})")
    if key == "t" or frame_t.empty:
        return frame_t
    eta = frame_t["eta"].to_numpy(dtype=float)  # (P,)
    gamma = frame_t["gamma"].to_numpy(dtype=float)
    if key == "eta_t":
        factor = eta
    elif key == "eta_t_over_gamma":
        factor = eta / gamma
    else:
        L = frame_t["run_id"].map(depth).to_numpy(dtype=float)  # noqa: N806 - the paper's symbol
        factor = eta / gamma ** (2.0 / L)
    return frame_t.assign(x=frame_t["x"].to_numpy(dtype=float) * factor)


ALLOWED_EXPRESSION = "allowed are numbers, t, eta, gamma, L, N, + - * / ^ **, parentheses and log, exp, sqrt()"


def expression_message(error: Exception) -> str:
    """One line for the expression field from storage's ExpressionError: without storage's 'x: '
    prefix (the page names the field), always saying what is allowed ('expression ends early' alone
    left the user guessing)."""
    text = str(error).removeprefix("x: ").strip()
    if "allowed are" not in text:
        text = f"{text}; {ALLOWED_EXPRESSION}"
    return f"Expression: {text}"
