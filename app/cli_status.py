"""The tables `gamma-lab status` prints: the sweep list, one sweep with its runs, one run (each run
as the views show it: storage.registry.VIEW_COLUMNS). app.cli parses and dispatches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from storage.liveness import overdue_line
from storage.registry import Registry, newer_line, newer_note
from storage.settings import Settings

RUN_FIELDS = ("run_id", "gamma", "eta", "seed", "effective_status", "attempt", "worker", "shown_steps_done",
              "shown_diverged_step", "error")  # `status RUN`, one line each


def print_sweeps(reg: Registry, settings: Settings, rows: Sequence[dict[str, Any]]) -> None:
    """One line per sweep, then a line for each sweep whose running runs have been silent a while."""
    print(f"{'sweep':<14}{'name':<24}{'owner':<12}{'where':<14}{'status':<10}{'runs':>6}  counts")
    for s in rows:
        counts = " ".join(f"{k}={v}" for k, v in s["counts"].items() if v)
        if s.get("newer"):  # runs showing a finished attempt while a newer one is not shown
            counts += " (newer attempts: " + " ".join(f"{k}={v}" for k, v in s["newer"].items()) + ")"
        where = f"{s['executor']}/{s['device']}"  # reruns go back there
        print(
            f"{s['id']:<14}{s['name'][:23]:<24}{s['owner'][:11]:<12}{where[:13]:<14}{s['status']:<10}"
            f"{s['n_runs']:>6}  {counts}"
        )
    for s in rows:  # running runs silent for a while: say so before they turn lost
        if s["counts"].get("running") or (s.get("newer") or {}).get("running"):
            if line := overdue_line(reg.list_runs(s["id"]), settings):
                print(f"sweep {s['id']}: {line}")


def print_run(run: dict[str, Any]) -> None:
    """One run: RUN_FIELDS, a note when a newer attempt is not the one shown, its summary."""
    for k in RUN_FIELDS:
        print(f"{k.removeprefix('effective_').removeprefix('shown_'):>14}: {run[k]}")
    if run["newer_status"]:  # steps and results below are the finished attempt's
        print(f"{'note':>14}: {newer_note(run, run['attempt'])}")
    for k, v in (run["shown_summary"] or {}).items():
        print(f"{k:>14}: {v}")


def print_sweep(settings: Settings, sweep: dict[str, Any], runs: Sequence[dict[str, Any]]) -> None:
    """One sweep: its counts, tags and notes, its runs' table, and whether running runs went silent."""
    from app.cli_sweeps import organization_lines

    counts = " ".join(f"{k}={v}" for k, v in sweep["counts"].items() if v)
    print(
        f"sweep {sweep['id']} ({sweep['name']}, {sweep['owner']}, {sweep['executor']} on {sweep['device']}): "
        f"{sweep['status']}  {counts}"
    )
    if sweep.get("newer"):
        print(newer_line(sweep["newer"]))
    for line in organization_lines(sweep):  # tags, notes, archived, times
        print(line)
    print(run_table(runs))
    if overdue := overdue_line(runs, settings):  # running runs silent for a while: say so before they turn lost
        print(overdue)


def run_table(runs: Sequence[dict[str, Any]]) -> str:
    """Each run as the views show it: effective status, the shown attempt's steps and loss, and a note
    when a newer attempt is not the one shown (storage.registry.VIEW_COLUMNS)."""
    lines = [f"{'run_id':<18}{'gamma':>10}{'eta':>11}{'seed':>5}  {'status':<10}{'steps':>7}{'final_loss':>12}"]
    for r in runs:
        loss = (r.get("shown_summary") or {}).get("final_train_loss")
        loss_s = f"{loss:.4g}" if isinstance(loss, float) else "-"
        steps = r.get("shown_steps_done")
        note = newer_note(r, r["attempt"])
        lines.append(
            f"{r['run_id']:<18}{r['gamma']:>10.4g}{r['eta']:>11.4g}{r['seed']:>5}  {r['effective_status']:<10}"
            f"{steps if steps is not None else '-':>7}{loss_s:>12}" + (f"  {note}" if note else "")
        )
    return "\n".join(lines)
