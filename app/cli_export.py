"""The tables `gamma-lab export` writes and `demo` prints: one row per run (its shown attempt), or
every stored point with --series. app.cli parses and dispatches.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pandas as pd

from app.cli import UserError
from storage.registry import SUMMARY_KEYS
from storage.settings import Settings

# the export predates tail_train_loss: its columns stay as scripts read them
EXPORT_SUMMARY_KEYS = tuple(k for k in SUMMARY_KEYS if k != "tail_train_loss")
EXPORT_COLUMNS = ("run_id", "gamma", "eta", "seed", "status", "steps_done", "diverged_step") + EXPORT_SUMMARY_KEYS
SERIES_COLUMNS = ("run_id", "gamma", "eta", "seed", "step", "metric", "value")  # export --series


def export_runs_frame(settings: Settings, sweep_id: str) -> pd.DataFrame:
    """One row per run: EXPORT_COLUMNS, of its shown attempt (its newest finished one while a newer
    attempt is not finished done or diverged: storage.registry.VIEW_COLUMNS)."""
    from storage.registry import Registry

    with Registry(settings.registry_url) as reg:
        if reg.get_sweep(sweep_id) is None:
            raise UserError(f"export: no sweep {sweep_id!r}")
        runs = reg.list_runs(sweep_id)
    rows = []
    for r in runs:
        row = {k: r.get(f"shown_{k}", r.get(k)) for k in EXPORT_COLUMNS[:7]}
        summary = r.get("shown_summary") or {}
        row.update({k: summary.get(k) for k in EXPORT_SUMMARY_KEYS})
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(EXPORT_COLUMNS))
    for k in ("steps_done", "diverged_step"):
        frame[k] = frame[k].astype("Int64")
    for k in EXPORT_SUMMARY_KEYS:
        frame[k] = frame[k].astype("float64")
    return frame


def export_series_frame(settings: Settings, sweep_id: str) -> pd.DataFrame:
    """Every stored point of the sweep's runs (their shown attempt): SERIES_COLUMNS, the run's γ, η and
    seed beside its id (a table grouped by cell needs no join with the runs export).

    Reads the DuckDB file directly when this process can open it; while another process records
    (the dashboard, say) the recorder writes the points for us (storage.export.export_points)."""
    from storage.export import ExportError, export_points
    from storage.registry import Registry, runs_columns

    with Registry(settings.registry_url) as reg:
        if reg.get_sweep(sweep_id) is None:
            raise UserError(f"export: no sweep {sweep_id!r}")
        cells = pd.DataFrame(runs_columns(reg, sweep_id=sweep_id, fields=SERIES_COLUMNS[:4]))
    cells = cells.astype({"run_id": str, "gamma": "float64", "eta": "float64", "seed": "int64"})
    with tempfile.TemporaryDirectory(prefix="gamma-lab-export-") as folder:
        target = Path(folder) / "series.parquet"
        try:
            export_points(settings, None, target, sweep_id=sweep_id)
        except Exception as exc:  # a damaged block read for the first time: one line, not a DuckDB traceback
            from storage.metric_store import StoreCorrupt, is_damage, is_damage_text

            if isinstance(exc, ExportError) and is_damage_text(str(exc)):  # the recorder read it (its answer)
                raise StoreCorrupt.of(settings.metrics_path, exc) from None
            if isinstance(exc, ExportError):
                raise UserError(f"export --series: {exc}") from None
            if not is_damage(exc):
                raise
            raise StoreCorrupt.of(settings.metrics_path, exc) from None
        points = pd.read_parquet(target)
    return points.merge(cells, on="run_id", how="left")[list(SERIES_COLUMNS)]  # a left merge keeps the order


def write_frame(frame: pd.DataFrame, fmt: str, out: str | None) -> None:
    """`frame` as csv (to `out`, or standard output) or parquet (to `out`, required: binary output)."""
    if fmt == "parquet" and not out:
        raise UserError("export: --format parquet needs --out FILE (binary output)")
    if out and Path(out).is_dir():
        raise UserError(f"export: --out {out!r} is a directory; give a file name")
    try:
        if fmt == "parquet":
            frame.to_parquet(out, index=False)
        elif out:
            frame.to_csv(out, index=False)
        else:
            frame.to_csv(sys.stdout, index=False)
    except BrokenPipeError:  # `gamma-lab export S | head`: the reader has what it wanted (see app.cli.main)
        raise
    except OSError as exc:  # an unwritable or missing folder: say which, no traceback
        raise UserError(f"export: cannot write {out!r}: {exc.strerror or exc}") from None


def demo_table(frame: pd.DataFrame) -> str:
    """`gamma-lab demo`'s summary: per (γ, η) cell the statuses, mean final train loss and test accuracy."""
    table = frame.groupby(["gamma", "eta"]).agg(
        status=("status", lambda s: "/".join(sorted(set(s)))),
        final_train_loss=("final_train_loss", "mean"),
        final_test_acc=("final_test_acc", "mean"),
    )
    return str(table.to_string(float_format=lambda v: f"{v:.4g}"))
