"""`gamma-lab reproduce NAME [--scale small|paper] [--executor local|celery]`, `reproduce --list`, and
`reproduce NAME --plan` (or --dry-run: each sweep's size and the estimated time, nothing queued;
tasks.reproduce_plan).

Runs a preset of tasks.reproduce: submits its sweeps (tasks.api.submit), waits for them with the
progress bar of `sweep --wait`, measures, writes the report into <data>/reports/ and prints its table.
The report's folder is the last line of standard output, as a sweep id is for `sweep`.
"""

from __future__ import annotations

import argparse
from typing import Any

from app.cli import EXIT_INTERRUPTED, UserError, _err, _settings
from app.cli_wait import recorder_for_wait, wait_interruptible


def cmd_reproduce(args: argparse.Namespace) -> int:
    from tasks import reproduce

    if args.list:
        for p in reproduce.presets().values():
            print(f"{p.name}: {p.claim}")
        return 0
    if not args.name:
        raise UserError(f"reproduce: give a preset name or --list; allowed: {', '.join(reproduce.presets())}")
    if args.plan:
        return print_plan(args.name, args.scale)
    return run_preset(args.name, args.scale, args.executor)


def print_plan(name: str, scale: str) -> int:
    """Print what preset `name` would run at `scale` and what it would cost; queue and create nothing."""
    from storage.settings import load_settings
    from tasks import reproduce
    from tasks.reproduce_plan import gpu_line, plan_text, preset_plan

    preset, settings = reproduce.get_preset(name), load_settings()
    print(plan_text(preset_plan(preset, scale, settings)))
    gpu = gpu_line(preset, scale, settings)
    if gpu is not None:
        print(gpu)
    return 0


def run_preset(name: str, scale: str, executor: str) -> int:
    """Run preset `name` at `scale` (tasks.reproduce.Preset.scales, 'ci' included), print its table and
    the report's folder. 0 when it ran (whatever the verdict), 130 on Ctrl-C."""
    from tasks import reproduce

    preset = reproduce.get_preset(name)
    specs = preset.specs(scale)
    settings = _settings(writes="`gamma-lab reproduce`")
    sweep_ids = submit_and_wait(settings, specs, executor)
    if sweep_ids is None:
        return EXIT_INTERRUPTED
    measured = preset.measure([reproduce.load_sweep(settings, s) for s in sweep_ids], scale)
    folder = reproduce.write_report(settings.data_dir, preset, scale, sweep_ids, specs, measured)
    print(f"{preset.name} ({scale}): {measured.verdict}")
    print(reproduce.format_table(measured.rows))
    for note in measured.notes:
        print(f"note: {note}")
    print(folder, flush=True)
    return 0


def submit_and_wait(settings: Any, specs: list[dict[str, Any]], executor: str) -> list[str] | None:
    """Submit each spec and wait for all; the sweep ids, or None when the user pressed Ctrl-C.
    A sweep that ended with failed runs is still measured: its verdict says what is missing."""
    from tasks import api
    from tasks.spec import SweepSpec

    if not specs:
        return []
    parsed = [SweepSpec.from_dict(s) for s in specs]  # every spec checked before any is queued
    recorder = recorder_for_wait(settings)
    sweep_ids: list[str] = []
    try:
        for spec in parsed:
            sweep_ids.append(api.submit(spec, settings, executor=executor))
            _err(f"sweep {sweep_ids[-1]} ({spec.name}): {spec.grid.n_cells} cells on the {executor} executor")
    except BaseException:
        if recorder is not None:
            recorder.stop()
        raise
    if wait_interruptible(settings, sweep_ids, recorder) == EXIT_INTERRUPTED:
        return None
    return sweep_ids


def add_parser(sub: Any) -> None:
    """Register the subcommand on build_parser's subparsers."""
    s = sub.add_parser("reproduce", help="run a preset that checks one of the paper's results; write a report")
    s.add_argument("name", nargs="?", help="the preset (see --list)")
    s.add_argument("--list", action="store_true", help="list the presets and the claim each checks")
    s.add_argument("--scale", choices=("small", "paper"), default="small", help="small: a laptop CPU in minutes")
    s.add_argument("--plan", "--dry-run", dest="plan", action="store_true",
                   help="print each sweep's size, the member-steps and the estimated time; queue nothing")
    s.add_argument("--executor", choices=("local", "celery"), default=None,
                   help="default: celery when a broker_url is set (env or settings.toml), else local")
    s.set_defaults(fn=cmd_reproduce)


