"""Reproduce the paper's results, one preset at a time (issue 11): `gamma-lab reproduce NAME`.

A Preset names the paper's claim, the sweep(s) that test it at two scales (`small`: a laptop CPU in
minutes; `paper`: GPU workers), and a measure function that turns the finished sweeps into rows of
(quantity, the paper's value, the measured value ± its uncertainty, the tolerance). Each row's verdict
is computed from those numbers alone (Row.verdict), never set by the preset, so a physics regression
in the engine turns a verdict to `fail`. The presets themselves are in tasks.reproduce_presets.

The CLI (app/reproduce_cli.py) submits the sweeps through tasks.api.submit, waits for them with the
same progress bar as `sweep --wait`, calls `measure` and `write_report`: an HTML page with the
figures (plotly.js inlined once, so the file opens offline) and report.json beside it, in
<data folder>/reports/<name>-<timestamp>/. The Reports page (app/views/reports.py) lists them.

Loss convention: gamma-lab's MSE is the mean over batch × classes; the authors' code sums over the
classes, so their loss is ours times the number of classes (the report gives that factor).
"""

from __future__ import annotations

import html
import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.analysis import DEFAULT_STATISTIC, tail_mean
from engine.config import ConfigError

SCALES = ("small", "paper")
COMPARES = ("within", "at_most", "at_least", "info")
VERDICTS = ("pass", "fail", "inconclusive", "info")
REPORTS_DIR = "reports"


@dataclass(frozen=True)
class Row:
    """One line of a report's table.

    compare: 'within' (pass when |measured − paper| ≤ tolerance), 'at_most' (pass when measured ≤
    paper + tolerance), 'at_least' (measured ≥ paper − tolerance), 'info' (a number shown for context,
    no verdict). stderr: the measurement's
    standard error, grid spacing included; a 'within' row whose stderr exceeds its tolerance cannot
    decide and is 'inconclusive'. note: what the number is made of (range, curves, points)."""

    quantity: str
    paper: float
    measured: float
    stderr: float
    tolerance: float
    compare: str = "within"
    note: str = ""

    def __post_init__(self) -> None:
        if self.compare not in COMPARES:
            raise ValueError(f"compare: must be one of {', '.join(COMPARES)} (got {self.compare!r})")

    @property
    def verdict(self) -> str:
        if self.compare == "info":
            return "info"
        if not math.isfinite(self.measured):
            return "fail"
        if self.compare == "at_most":
            return "pass" if self.measured <= self.paper + self.tolerance else "fail"
        if self.compare == "at_least":
            return "pass" if self.measured >= self.paper - self.tolerance else "fail"
        if math.isfinite(self.stderr) and self.stderr > self.tolerance:
            return "inconclusive"
        return "pass" if abs(self.measured - self.paper) <= self.tolerance else "fail"

    @property
    def why(self) -> str:
        """Why a row did not pass, in words (empty when it passed or is informative)."""
        v = self.verdict
        if v == "fail" and not math.isfinite(self.measured):
            return f"no measurement: {self.note}" if self.note else "no measurement"
        if v == "fail" and self.compare == "at_most":
            return f"{fmt(self.measured)} is above {fmt(self.paper + self.tolerance)}"
        if v == "fail" and self.compare == "at_least":
            return f"{fmt(self.measured)} is below {fmt(self.paper - self.tolerance)}"
        if v == "fail":
            return f"off by {fmt(abs(self.measured - self.paper))}, more than the tolerance {fmt(self.tolerance)}"
        if v == "inconclusive":
            return f"uncertainty {fmt(self.stderr)} exceeds the tolerance {fmt(self.tolerance)}: refine the grid"
        return ""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("paper", "measured", "stderr", "tolerance"):
            d[k] = d[k] if math.isfinite(d[k]) else None  # JSON has no NaN
        return d | {"verdict": self.verdict, "why": self.why}


@dataclass
class Measurement:
    """What a preset's measure function returns: the table rows, plotly figures, notes in words."""

    rows: list[Row]
    figures: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """fail if any row failed, else inconclusive if any could not decide, else pass."""
        verdicts = {r.verdict for r in self.rows}
        for v in ("fail", "inconclusive"):
            if v in verdicts:
                return v
        return "pass" if "pass" in verdicts else "inconclusive"


@dataclass
class SweepData:
    """One finished sweep as a preset reads it: its spec and one row per run (γ, η, seed, status,
    the summary statistics), the recorded series loaded on demand."""

    sweep_id: str
    spec: dict[str, Any]
    runs: pd.DataFrame  # columns run_id, gamma, eta, seed, status, final_train_loss, tail_train_loss, ...
    load_series: Callable[[], pd.DataFrame] | None = None
    _series: pd.DataFrame | None = None
    load_arrays: Callable[[], dict[str, dict[str, np.ndarray]]] | None = None  # storage.queries.run_arrays

    def arrays(self) -> dict[str, dict[str, np.ndarray]]:
        """run_id -> {name: array}: the final-function snapshots (metric "function") of the shown attempts."""
        if self.load_arrays is None:
            raise ValueError(f"sweep {self.sweep_id}: no arrays loader")
        return self.load_arrays()

    def series(self, metric: str = "train_loss") -> pd.DataFrame:
        """Every point of `metric` of the shown attempts: run_id, step, value (sorted by run, step)."""
        if self._series is None:
            if self.load_series is None:
                raise ValueError(f"sweep {self.sweep_id}: no series loader")
            self._series = self.load_series()
        points = self._series[self._series["metric"] == metric]
        return points[["run_id", "step", "value"]].reset_index(drop=True)

    def statistic(self, key: str = DEFAULT_STATISTIC) -> pd.Series:
        """Per run the summary statistic `key` (NaN for a run that did not finish `done`). The tail
        statistic of a run recorded before it existed is computed from its stored series."""
        values = self.runs[key].astype(float) if key in self.runs else pd.Series(np.nan, index=self.runs.index)
        missing = (self.runs["status"] == "done") & values.isna()
        if key == DEFAULT_STATISTIC and missing.any():
            pts = self.series()
            for i in np.flatnonzero(missing.to_numpy()):
                run = pts[pts["run_id"] == self.runs["run_id"].iloc[i]]
                if len(run):
                    values.iloc[i] = tail_mean(run.sort_values("step")["value"].to_numpy())
        return values.where(self.runs["status"] == "done")

    @property
    def steps(self) -> int:
        return int((self.spec.get("train") or {}).get("steps") or 0)


@dataclass(frozen=True)
class Preset:
    """A claim of the paper and how to check it. scales: scale -> the sweep spec dicts to run
    ('ci' is the test suite's shrunk scale); measure(sweeps, scale) -> Measurement."""

    name: str
    claim: str
    paper_ref: str
    scales: dict[str, Callable[[], list[dict[str, Any]]]]
    measure: Callable[[list[SweepData], str], Measurement]

    def specs(self, scale: str) -> list[dict[str, Any]]:
        if scale not in self.scales:
            raise ConfigError("scale", f"must be one of {', '.join(self.scales)} (got {scale!r})")
        return self.scales[scale]()


def presets() -> dict[str, Preset]:
    from tasks.reproduce_presets import PRESETS

    return {p.name: p for p in PRESETS}


def get_preset(name: str) -> Preset:
    """The preset called `name`; ConfigError naming the allowed names otherwise."""
    found = presets()
    if name not in found:
        raise ConfigError("reproduce", f"unknown preset {name!r}; allowed: {', '.join(found)}")
    return found[name]


# ----------------------------------------------------------------------------- reading sweeps


def load_sweep(settings: Any, sweep_id: str) -> SweepData:
    """The sweep's runs from the registry (their shown attempt), the series through storage.export."""
    from storage.export import export_points
    from storage.registry import Registry

    with Registry(settings.registry_url) as reg:
        sweep = reg.get_sweep(sweep_id)
        if sweep is None:
            raise ConfigError("sweep", f"no sweep {sweep_id!r}")
        runs = reg.list_runs(sweep_id)
    rows = [
        {"run_id": r["run_id"], "gamma": r["gamma"], "eta": r["eta"], "seed": r["seed"],
         "status": r.get("shown_status", r["status"]), **(r.get("shown_summary") or {})}
        for r in runs
    ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=list(dict.fromkeys(["run_id", "gamma", "eta", "seed", "status",
                                                           *(k for r in rows for k in r)])))

    def load() -> pd.DataFrame:
        with tempfile.TemporaryDirectory(prefix="gamma-lab-reproduce-") as folder:
            target = Path(folder) / "points.parquet"
            export_points(settings, None, target, sweep_id=sweep_id)
            points = pd.read_parquet(target)
        return points[["run_id", "metric", "step", "value"]].sort_values(["run_id", "step"]).reset_index(drop=True)

    def arrays() -> dict[str, dict[str, np.ndarray]]:  # through the recorder when a dashboard records
        from storage.export import export_arrays

        return export_arrays(settings, [r["run_id"] for r in runs])

    return SweepData(sweep_id, dict(sweep["spec"]), frame, load, load_arrays=arrays)


# ----------------------------------------------------------------------------- the report


def fmt(v: float) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.4g}"


TABLE_COLUMNS = ("quantity", "paper", "measured ± uncertainty", "tolerance", "verdict")


def table_lines(rows: Sequence[Row]) -> list[list[str]]:
    """The table's cells as text, one list per row: what the CLI prints and the HTML shows."""
    out = []
    for r in rows:
        paper = {"within": fmt(r.paper), "at_most": f"≤ {fmt(r.paper)}", "at_least": f"≥ {fmt(r.paper)}",
                 "info": "—"}[r.compare]
        tol = "—" if r.compare == "info" else fmt(r.tolerance)
        out.append([r.quantity, paper, f"{fmt(r.measured)} ± {fmt(r.stderr)}", tol, r.verdict])
    return out


def format_table(rows: Sequence[Row]) -> str:
    """A plain-text table (columns padded), a 'why' line under each row that did not pass."""
    cells = [list(TABLE_COLUMNS), *table_lines(rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(TABLE_COLUMNS))]
    lines = []
    for k, c in enumerate(cells):
        lines.append("  ".join(text.ljust(w) for text, w in zip(c, widths, strict=True)).rstrip())
        if k and rows[k - 1].why:
            lines.append(f"    why: {rows[k - 1].why}")
        if k and rows[k - 1].note:
            lines.append(f"    {rows[k - 1].note}")
    return "\n".join(lines)


def budget_text(specs: Sequence[dict[str, Any]]) -> str:
    """The step budget and network of each sweep in words (a rich-side slope moves with the budget)."""
    parts = []
    for s in specs:
        m, t, d = s.get("model", {}), s.get("train", {}), s.get("data", {})
        parts.append(
            f"{s.get('name')}: {m.get('arch')} L={m.get('depth')} N={m.get('width')} {m.get('activation')}, "
            f"{d.get('dataset')}, {t.get('steps')} steps of batch {t.get('batch_size')}"
        )
    return "; ".join(parts) if parts else "no network training (closed-form simulator)"


def loss_factor(specs: Sequence[dict[str, Any]]) -> str:
    """The loss convention of the report's sweeps, each stated once."""
    from tasks.spec import loss_conventions

    return loss_conventions(specs) or "no network loss in this report"


def report_dict(preset: Preset, scale: str, sweep_ids: Sequence[str], specs: Sequence[dict[str, Any]],
                measured: Measurement, created: float) -> dict[str, Any]:
    return {
        "preset": preset.name,
        "claim": preset.claim,
        "paper_ref": preset.paper_ref,
        "scale": scale,
        "created": created,
        "created_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(created)),
        "budget": budget_text(specs),
        "loss_convention": loss_factor(specs),
        "sweeps": list(sweep_ids),
        "verdict": measured.verdict,
        "columns": list(TABLE_COLUMNS),
        "table": table_lines(measured.rows),
        "rows": [r.to_json() for r in measured.rows],
        "notes": list(measured.notes),
    }


def write_report(data_dir: Path, preset: Preset, scale: str, sweep_ids: Sequence[str],
                 specs: Sequence[dict[str, Any]], measured: Measurement, *, now: float | None = None) -> Path:
    """Write report.html and report.json into <data_dir>/reports/<name>-<UTC timestamp>/; return it."""
    created = time.time() if now is None else now
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(created))
    folder = Path(data_dir) / REPORTS_DIR / f"{preset.name}-{stamp}"
    n = 1
    while folder.exists():  # two reports of one preset within a second
        n += 1
        folder = Path(data_dir) / REPORTS_DIR / f"{preset.name}-{stamp}-{n}"
    folder.mkdir(parents=True)
    data = report_dict(preset, scale, sweep_ids, specs, measured, created)
    data["figures"] = [json.loads(f.to_json()) for f in measured.figures]  # the Reports page draws these
    (folder / "report.json").write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    (folder / "report.html").write_text(_html(data, measured.figures), encoding="utf-8")
    return folder


def _html(data: dict[str, Any], figures: Sequence[Any]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in data["columns"])
    body = []
    for cells, row in zip(data["table"], data["rows"], strict=True):
        tds = "".join(f"<td>{e(c)}</td>" for c in cells)
        extra = " · ".join(x for x in (row["why"], row["note"]) if x)
        body.append(f'<tr class="{e(row["verdict"])}">{tds}</tr>')
        if extra:
            body.append(f'<tr class="note"><td colspan="{len(cells)}">{e(extra)}</td></tr>')
    # plotly.js once, inline, with the first figure: the file opens without a network
    figs = [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figures)]
    notes = "".join(f"<li>{e(n)}</li>" for n in data["notes"])
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>gamma-lab reproduce {e(data['preset'])}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px}}tr.pass td:last-child{{color:#1b7f3b}}
tr.fail td:last-child{{color:#b00020}}tr.note td{{color:#555;font-size:90%;border-top:none}}</style></head>
<body><h1>{e(data['preset'])}: {e(data['verdict'])}</h1>
<p><b>Claim:</b> {e(data['claim'])} ({e(data['paper_ref'])})</p>
<p><b>Scale:</b> {e(data['scale'])} · <b>created</b> {e(data['created_utc'])} UTC</p>
<p><b>Budget:</b> {e(data['budget'])}</p>
<p><b>Sweeps:</b> {e(', '.join(data['sweeps']) or 'none')}</p>
<p><b>Loss:</b> {e(data['loss_convention'])}</p>
<table><tr>{head}</tr>{''.join(body)}</table>
<ul>{notes}</ul>
{''.join(figs)}
</body></html>
"""


def list_reports(data_dir: Path) -> list[dict[str, Any]]:
    """Every readable report.json under <data_dir>/reports, newest first, each with its folder."""
    root = Path(data_dir) / REPORTS_DIR
    found = []
    for path in sorted(root.glob("*/report.json")) if root.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a report being written, or damaged: the page lists the others
        if isinstance(data, dict) and "preset" in data:
            found.append(data | {"folder": str(path.parent)})
    return sorted(found, key=lambda d: d.get("created") or 0, reverse=True)
