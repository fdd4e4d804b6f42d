"""The `gamma-lab` command line.

    gamma-lab serve [--host 127.0.0.1] [--port 8501]     the dashboard (recorder + local workers inside)
    gamma-lab sweep SPEC.toml [SPEC.toml...] [--executor local|celery] [--wait] [--rerun] [--device cpu|cuda]
    gamma-lab worker [--queue cpu|gpu] [--device cpu|cuda:0[,cuda:1...]] [--concurrency N]
    gamma-lab recorder                                   the single owner of the DuckDB metric file
    gamma-lab status [SWEEP] [--workers]
    gamma-lab cancel SWEEP|RUN
    gamma-lab rerun SWEEP|RUN [--all] [--device cpu|cuda]
    gamma-lab export SWEEP --format csv|parquet [--out FILE] [--series]
    gamma-lab demo                                       a tiny local sweep, then a summary table
    gamma-lab reproduce NAME [--scale small|paper] | --list   check one of the paper's results, write a report
    gamma-lab user add|list|remove|passwd, gamma-lab audit   accounts and the audit trail (app/cli_users.py)
    gamma-lab rename|tag|note|archive|restore|purge SWEEP ...   name, tags, notes; hide; delete (app/cli_sweeps.py)

SWEEP and RUN may be given by a unique prefix of at least 4 characters, as git takes a commit; an
ambiguous one is refused naming its candidates (exit 2). `--wait` shows steps trained (runs × steps).

Settings come from storage.settings: GAMMA_LAB_DATA (data folder, default ./data),
GAMMA_LAB_BROKER_URL (Redis; unset = embedded mode), GAMMA_LAB_REGISTRY_URL, <data>/settings.toml.

Scripts capture the sweep id from the last line of standard output; everything else (progress,
warnings) goes to standard error. A user error prints one clear line (or one per spec problem) and
exits 2, without a traceback.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_USAGE = 2
EXIT_UNFINISHED = 1
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports it
DEMO_SPEC = Path(__file__).resolve().parent / "examples" / "demo.toml"


class UserError(Exception):
    """Shown as one line (exit 2): bad input, not a bug."""


def _err(*lines: str) -> None:
    for line in lines:
        print(line, file=sys.stderr)


def _settings(writes: str | None = None) -> Any:
    """The settings, the data folder made ready. `writes`: the command, when it writes there; on a
    read-only data folder it is refused in one line (DataFolderReadOnly, exit 2) and readers go on
    without creating anything."""
    from storage.settings import load_settings

    settings = load_settings()
    if writes is not None:
        settings.require_writable(writes)
    elif settings.read_only_reason() is not None:
        return settings  # a reader on a read-only folder: nothing to create (and nothing can be)
    try:  # every command records or reads there: an unusable folder is one line, not a traceback
        settings.ensure_dirs()
    except OSError as exc:
        raise UserError(
            f"data folder: cannot use {str(settings.data_dir)!r} ({exc.strerror or exc}); "
            "set GAMMA_LAB_DATA to a folder you can write"
        ) from None
    return settings


# ----------------------------------------------------------------------------- serve


WARM_IDLE_S = 600  # seconds the dashboard's idle local workers wait for the next launch


def cmd_serve(args: argparse.Namespace) -> int:
    entry = Path(__file__).resolve().parent / "main.py"
    if not entry.exists():
        raise UserError(f"the dashboard entry {entry} is missing (install gamma-lab with its app package)")
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(entry),
        "--server.address",
        args.host,
        "--server.port",
        str(args.port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        # viewer: no Deploy button and no developer menu (rerun, clear cache, settings) for users
        "--client.toolbarMode",
        "viewer",
    ]
    _err(f"gamma-lab dashboard on http://{args.host}:{args.port}")
    # its local workers start with it and wait warm for launches (tasks.local_queue.warm_up); 0 turns it off
    env = {**os.environ, "GAMMA_LAB_WARM_WORKERS": os.environ.get("GAMMA_LAB_WARM_WORKERS", str(WARM_IDLE_S))}
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 0


# ----------------------------------------------------------------------------- sweep


def _read_spec(path: str) -> Any:
    from tasks.spec import SweepSpec

    p = Path(path)
    if p.is_dir():
        raise UserError(f"spec: {path!r} is a directory; give the sweep's .toml file")
    if not p.is_file():
        raise UserError(f"spec: no such file {path!r}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"spec: cannot read {path!r}: {exc}") from None
    return SweepSpec.from_toml(text)


def start_worker_early(args: argparse.Namespace) -> None:
    """`gamma-lab sweep` in embedded mode: once its specs pass the cheap checks, start the local worker
    before anything else (the CLI's imports, the store's opening, planning, queueing: about half a
    second), so that the worker's own start-up (interpreter, torch: over a second) runs meanwhile
    instead of after (tasks.local_queue.start_early; bench/end_to_end.py). Best effort and silent:
    cmd_sweep checks everything again and says what is wrong; a worker that gets no unit leaves."""
    try:
        from storage.settings import load_settings
        from tasks.spec import PROCEDURAL_DATASETS, validate_spec

        settings = load_settings()
        if settings.broker_url or args.executor not in (None, "local") or settings.read_only_reason() is not None:
            return
        for path in args.spec:
            spec = _read_spec(path)
            if spec.data.dataset in PROCEDURAL_DATASETS:  # a data file's check imports torch: left to cmd_sweep
                validate_spec(spec, settings)
        settings.ensure_dirs()
        from tasks.local_queue import start_early

        start_early(settings)
    except Exception:  # noqa: BLE001 - cmd_sweep says what is wrong, in one line
        return


def cmd_sweep(args: argparse.Namespace) -> int:
    from app.cli_wait import (
        check_store,
        describe_cells,
        recorder_for_wait,
        store_absent,
        stored_statuses,
        wait_interruptible,
    )
    from tasks import api
    from tasks.spec import SpecError, validate_spec

    settings = _settings(writes="`gamma-lab sweep`")
    # Every spec is read and checked before any is queued: `gamma-lab sweep specs/*.toml` with one bad
    # file queues nothing (it used to stop with "unrecognized arguments" for a second file).
    specs = []
    for path in args.spec:
        try:
            spec = _read_spec(path)
            # data files, cell limit (counted from the axes' sizes); submit repeats it and logs warnings.
            # Always, before stored_statuses lists the cells: a 10^7-cell grid hung here at 1.8 GB.
            validate_spec(spec, settings)
        except SpecError as exc:
            if len(args.spec) == 1:
                raise
            _err(
                f"error: {path}: {len(exc.errors)} problem(s) in the sweep spec; nothing was queued:",
                *(f"  {line}" for line in exc.lines()),
            )
            return EXIT_USAGE
        except UserError as exc:
            if len(args.spec) == 1:
                raise
            raise UserError(f"{exc}; nothing was queued") from None
        specs.append(spec)
    # --wait records here: open the metric store before queueing, so a broken store stops us first.
    # Without a metrics file yet there is nothing to check: wait_for opens it once the units are queued.
    check = not store_absent(settings)
    recorder = recorder_for_wait(settings) if args.wait and check else None
    if check and not args.wait:
        check_store(settings)
    sweep_ids = []
    try:
        for spec in specs:
            before = stored_statuses(settings, spec)
            sweep_id = api.submit(spec, settings, executor=args.executor, rerun=args.rerun, device=args.device)
            sweep_ids.append(sweep_id)
            cells = describe_cells(spec, before, args.rerun)
            _err(f"sweep {sweep_id} ({spec.name}): {cells} on the {args.executor} executor")
    except BaseException:
        if recorder is not None:
            recorder.stop()
        if sweep_ids:  # a later one failed (broker down, say): the ones queued go on; say which
            print("\n".join(sweep_ids), flush=True)
            _err(f"queued before the error: {' '.join(sweep_ids)}")
        raise
    code = 0
    if args.wait:
        code = wait_interruptible(settings, sweep_ids, recorder)
    print("\n".join(sweep_ids), flush=True)
    return code


# ----------------------------------------------------------------------------- worker / recorder


def cmd_worker(args: argparse.Namespace) -> int:
    from storage.registry import sqlite_path

    settings = _settings()
    if not settings.broker_url or sqlite_path(settings.registry_url) is not None:
        # it writes the registry (a redelivered unit's new attempt) and, embedded, the spool; a Celery
        # worker with a PostgreSQL registry may read its datasets from a read-only share
        settings.require_writable("`gamma-lab worker`" + ("" if settings.broker_url else " in embedded mode"))
    if not settings.broker_url:
        raise UserError(
            "worker: a Celery worker needs a broker; set GAMMA_LAB_BROKER_URL=redis://host:port/0 "
            "(embedded mode starts local workers by itself)"
        )
    devices = [d.strip() for d in args.device.split(",") if d.strip()]
    from tasks.planner import device_class

    for d in devices:
        device_class(d)
    queue = args.queue or ("cpu" if devices == ["cpu"] else "gpu")
    if len(devices) > 1:
        # One process per GPU, each seeing only its own device: CUDA is never initialized in a parent
        # that forks, and a crash on one GPU leaves the others working.
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker", "--queue", queue, "--device", d, "--concurrency", "1"]
            )
            for d in devices
        ]
        try:
            return max(p.wait() for p in procs)
        except KeyboardInterrupt:
            for p in procs:
                p.terminate()
            return 0
    device = devices[0]
    env_device = "cpu"
    if device != "cpu":
        index = device.split(":", 1)[1] if ":" in device else "0"
        os.environ["CUDA_VISIBLE_DEVICES"] = index
        env_device = "cuda"  # the only visible GPU is cuda:0 inside this process
    os.environ["GAMMA_LAB_WORKER_DEVICE"] = env_device
    os.environ["GAMMA_LAB_WORKER_DEVICE_NAME"] = device  # as the operator named it (cuda:1), for status --workers
    concurrency = max(1, args.concurrency)
    if env_device == "cuda":
        concurrency = 1  # one process per GPU
    os.environ.setdefault("GAMMA_LAB_TORCH_THREADS", str(max(1, (os.cpu_count() or 1) // concurrency)))
    from storage.logs import configure_logging
    from tasks.celery_app import configure

    app = configure(settings.broker_url)
    pool = "solo" if concurrency == 1 else "prefork"
    as_json = configure_logging(settings.broker_url)  # Celery's lines too (tasks.celery_app)
    argv = [
        *(["--quiet"] if as_json else []),  # no multi-line text banner among the JSON lines
        "worker",
        "-Q",
        queue,
        "-P",
        pool,
        "-c",
        str(concurrency),
        "--loglevel",
        args.loglevel,
        "-n",
        # unique per process: two workers on one machine with one name confuse Celery's remote control
        f"gamma-lab-{queue}-{device.replace(':', '')}-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    app.worker_main(argv)
    return 0


def cmd_recorder(args: argparse.Namespace) -> int:
    from storage.logs import configure_logging
    from storage.recorder import RecorderBusy, record_in_foreground

    logging.getLogger("storage.recorder").setLevel(logging.INFO)  # hand-over and standby lines
    settings = _settings(writes="`gamma-lab recorder`")
    configure_logging(settings.broker_url)  # JSON lines in lab mode (storage.logs)
    try:
        record_in_foreground(settings)  # until SIGTERM/SIGINT, between batches: nothing half-stored
    except RecorderBusy as exc:
        raise UserError(str(exc)) from None
    return 0


# ----------------------------------------------------------------------------- status / cancel / rerun


def resolve_id(settings: Any, text: str, command: str, kinds: Sequence[str] = ("sweep", "run")) -> str:
    """The full sweep or run id `text` names: the id, or a unique leading part of it of at least 4
    characters, as git takes a commit (Registry.resolve_prefix). One line, exit 2, when it matches
    nothing or several (naming them)."""
    from storage.registry import AmbiguousId, Registry, UnknownId

    with Registry(settings.registry_url) as reg:
        try:
            return reg.resolve_prefix(text, kinds)[1]
        except (UnknownId, AmbiguousId) as exc:
            raise UserError(f"{command}: {exc}") from None


def cmd_status(args: argparse.Namespace) -> int:
    from app.cli_status import print_run, print_sweep, print_sweeps
    from app.cli_wait import WorkerWatch, catch_up
    from storage.registry import Registry

    settings = _settings()
    if args.workers:  # the broker is asked first: when it is down, main says so in one line
        from tasks.workers import celery_workers, list_workers, workers_table

        registered = celery_workers(settings)
    catch_up(settings)
    WorkerWatch(settings).check()  # a killed local worker: its unit requeued, queued work given a worker
    if args.workers:  # each worker's host, device, last heartbeat and the runs it trains
        print(workers_table(list_workers(settings, registered)))
        return 0
    with Registry(settings.registry_url) as reg:
        if args.sweep is None:
            # archived sweeps: only with --archived
            print_sweeps(reg, settings, reg.list_sweeps(limit=args.limit, archived=args.archived))
            return 0
        args.sweep = resolve_id(settings, args.sweep, "status")  # a unique prefix names it too
        sweep = reg.get_sweep(args.sweep)
        if sweep is None:
            run = reg.get_run(args.sweep)
            if run is None:
                raise UserError(f"status: {args.sweep!r} is neither a sweep nor a run")
            print_run(run)
            return 0
        runs = reg.list_runs(args.sweep)
    print_sweep(settings, sweep, runs)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from app.cli_wait import catch_up
    from tasks import api

    settings = _settings(writes="`gamma-lab cancel`")
    catch_up(settings)  # statuses as they are now: runs that already ended are not "cancelled"
    args.id = resolve_id(settings, args.id, "cancel")  # a unique prefix names it too
    shared = api.shared_active_runs(settings, args.id)  # before: afterwards they are no longer active
    n = api.cancel(settings, args.id)
    _err(f"cancel requested for {n} run(s) of {args.id}")
    if shared:  # a run belongs to every sweep that launched its cell: it stops for all of them
        others = ", ".join(f"{k} run(s) of sweep {sid}" for sid, k in sorted(shared.items()))
        _err(f"note: these runs are shared, so this also stops {others}")
    return 0


def cmd_rerun(args: argparse.Namespace) -> int:
    from app.cli_wait import WorkerWatch, catch_up, wait_interruptible
    from storage.registry import Registry
    from tasks import api

    settings = _settings(writes="`gamma-lab rerun`")
    # Record waiting events first: that is also when runs of a killed worker are marked `lost`.
    # Without it, `rerun` after a worker died said "0 run(s) queued" until some `status` caught up.
    catch_up(settings)
    WorkerWatch(settings).check()  # queued runs whose only worker was killed: rerun cannot take them, this can
    args.id = resolve_id(settings, args.id, "rerun")  # a unique prefix names it too
    ids = api.rerun(settings, args.id, everything=args.all, device=args.device)
    _err(f"{len(ids)} run(s) queued again as a new attempt")
    if ids and args.wait:  # the sweep (a run id: the sweep it joined last) until every run ended
        with Registry(settings.registry_url) as reg:
            sweep_id = args.id if reg.get_sweep(args.id) is not None else reg.sweeps_of_run(args.id)[0]
        return wait_interruptible(settings, [sweep_id], None)
    if not ids:
        with Registry(settings.registry_url) as reg:
            sweep = reg.get_sweep(args.id)
            rows = reg.list_runs(args.id) if sweep is not None else reg.get_runs(reg.run_ids_for(args.id))
        counts: dict[str, int] = {}
        for r in rows:  # as `status` shows them (a finished result with a cancelled rerun reads done)
            counts[r["effective_status"]] = counts.get(r["effective_status"], 0) + 1
        line = "nothing to rerun: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        line += "; rerun trains failed, cancelled and lost runs (--all: finished ones too)"
        if counts.get("running"):
            line += (
                f"; a run whose worker died stays running until it has sent no heartbeat for "
                f"{settings.lost_after_s:g} s, then it is lost"
            )
        _err(line)
    return 0


# ----------------------------------------------------------------------------- export


def cmd_export(args: argparse.Namespace) -> int:
    from app.cli_export import export_runs_frame, export_series_frame, write_frame
    from app.cli_wait import catch_up

    settings = _settings()
    catch_up(settings, strict=True)  # so the export is complete (skipped if another process records)
    args.sweep = resolve_id(settings, args.sweep, "export", ("sweep",))  # a unique prefix names it too
    frame = (export_series_frame if args.series else export_runs_frame)(settings, args.sweep)
    write_frame(frame, args.format, args.out)
    if args.out:
        _err(f"wrote {len(frame)} rows to {args.out}")
    return 0


# ----------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    from app.cli_export import demo_table, export_runs_frame
    from app.cli_wait import describe_cells, recorder_for_wait, stored_statuses, wait_interruptible
    from tasks import api

    settings = _settings(writes="`gamma-lab demo`")
    spec = _read_spec(str(DEMO_SPEC))
    if args.steps:
        from dataclasses import replace

        # another config, so another name: the sweep list told the two apart only by their ids
        spec = replace(spec, name=f"{spec.name}-{args.steps}steps", train=replace(spec.train, steps=args.steps))
    recorder = recorder_for_wait(settings)
    before = stored_statuses(settings, spec)
    try:
        sweep_id = api.submit(spec, settings, executor="local")
    except BaseException:
        if recorder is not None:
            recorder.stop()
        raise
    # a second `gamma-lab demo` reuses the first one's cells (nothing trains): say so, as `sweep` does
    cells = describe_cells(spec, before, rerun=False)
    _err(f"demo sweep {sweep_id} ({spec.name}): {cells}, data in {settings.data_dir}")
    code = wait_interruptible(settings, [sweep_id], recorder)
    if code == EXIT_INTERRUPTED:
        print(sweep_id, flush=True)
        return code
    print(demo_table(export_runs_frame(settings, sweep_id)), file=sys.stderr)
    print(sweep_id, flush=True)
    return code


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gamma-lab", description="Sweep γ and η of online SGD; browse the results.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the dashboard")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default: localhost only)")
    s.add_argument("--port", type=int, default=8501)
    s.set_defaults(fn=cmd_serve)

    s = sub.add_parser("sweep", help="launch a sweep from a TOML spec")
    s.add_argument("spec", nargs="+", help="one or more sweep .toml files (all checked before any is queued)")
    s.add_argument(
        "--executor",
        choices=("local", "celery"),
        default=None,
        help="default: celery when a broker_url is set (GAMMA_LAB_BROKER_URL or settings.toml), else local",
    )
    s.add_argument("--device", default=None, help="cpu (default) or cuda")
    s.add_argument("--wait", action="store_true", help="show progress until every run ended")
    s.add_argument("--rerun", action="store_true", help="retrain cells that already have a stored result")
    s.set_defaults(fn=cmd_sweep)

    s = sub.add_parser("worker", help="a Celery worker for the lab's machines")
    s.add_argument("--queue", choices=("cpu", "gpu"), default=None)
    s.add_argument("--device", default="cpu", help="cpu, cuda:0, or cuda:0,cuda:1 for one process per GPU")
    s.add_argument("--concurrency", type=int, default=1)
    s.add_argument("--loglevel", default="INFO")
    s.set_defaults(fn=cmd_worker)

    s = sub.add_parser("recorder", help="ingest events into the metric store")
    s.set_defaults(fn=cmd_recorder)

    s = sub.add_parser("status", help="sweeps, or the runs of one sweep")
    s.add_argument("sweep", nargs="?", help="a sweep or run id, or a unique prefix of one (4+ characters)")
    s.add_argument("--limit", type=int, default=20)
    s.add_argument("--workers", action="store_true", help="each worker: host, device, heartbeat, its runs")
    s.add_argument("--archived", action="store_true", help="the archived sweeps (hidden otherwise)")
    s.set_defaults(fn=cmd_status)

    s = sub.add_parser("cancel", help="stop a sweep or a run (at its next log step)")
    s.add_argument("id", help="a sweep or run id, or a unique prefix of one (4+ characters)")
    s.set_defaults(fn=cmd_cancel)

    s = sub.add_parser("rerun", help="train again the failed/cancelled/lost runs of a sweep, or one run")
    s.add_argument("id", help="a sweep or run id, or a unique prefix of one (4+ characters)")
    s.add_argument("--all", action="store_true", help="also runs that have a result")
    s.add_argument(
        "--device",
        default=None,
        help="cpu or cuda[:N] (default: the device the sweep was launched on, hence its queue)",
    )
    s.add_argument("--wait", action="store_true", help="show progress until every run of the sweep ended")
    s.set_defaults(fn=cmd_rerun)

    s = sub.add_parser("export", help="one row per run (or every point with --series)")
    s.add_argument("sweep", help="a sweep id, or a unique prefix of one (4+ characters)")
    s.add_argument("--format", choices=("csv", "parquet"), default="csv")
    s.add_argument("--out", default=None)
    s.add_argument("--series", action="store_true", help="every point: run_id, gamma, eta, seed, step, metric, value")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("demo", help="a tiny local sweep and a summary table")
    s.add_argument("--steps", type=int, default=None)
    s.set_defaults(fn=cmd_demo)

    from app.cli_sweeps import add_parsers as add_sweep_parsers  # rename, tag, note, archive, restore, purge
    from app.cli_users import add_parsers  # user add|list|remove|passwd, audit

    add_parsers(sub)
    add_sweep_parsers(sub)
    from app.reproduce_cli import add_parser as add_reproduce_parser  # reproduce NAME | --list (issue 11)

    add_reproduce_parser(sub)
    return p


def _loaded(module: str, *names: str) -> tuple[type[BaseException], ...]:
    """The exception classes `names` of `module` when this process has imported it, else none (an
    `except ()` matches nothing): an exception of a module never imported cannot have been raised.
    main names them so, not by importing them first: that imported Redis in embedded mode, DuckDB,
    NumPy and PyArrow for the metric store, SQLAlchemy for the accounts, before every command
    (about 0.2 s of `gamma-lab sweep`'s start-up, before its units were queued)."""
    mod = sys.modules.get(module)
    return tuple(getattr(mod, name) for name in names) if mod is not None else ()


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    if args.fn is cmd_sweep:  # before the imports below: the worker's start-up runs beside them
        start_worker_early(args)
    from engine.config import ConfigError
    from storage.settings import SettingsError, load_settings
    from tasks.access import NotAllowed
    from tasks.spec import SpecError

    try:
        if getattr(args, "executor", "x") is None:  # the settings decide: env, then settings.toml
            args.executor = "celery" if load_settings().broker_url else "local"
        return int(args.fn(args) or 0)
    except SpecError as exc:
        _err(
            f"error: {len(exc.errors)} problem(s) in the sweep spec; nothing was queued:",
            *(f"  {line}" for line in exc.lines()),
        )
        return EXIT_USAGE
    except (
        (UserError, ConfigError, SettingsError, NotAllowed)
        + _loaded("storage.registry", "RegistryError")
        + _loaded("storage.accounts", "AccountError")
        + _loaded("storage.metric_store", "StoreCorrupt")
    ) as exc:
        _err(f"error: {exc}")  # bad input named by field or file (NotAllowed: nothing was changed); any
        return EXIT_USAGE  # other ValueError is a bug, and its traceback shows
    except _loaded("redis.exceptions", "ConnectionError", "TimeoutError") as exc:  # broker down, or a wrong URL
        from tasks.api import redact_url

        url = redact_url(load_settings().broker_url or "the broker")
        _err(
            f"error: broker: cannot reach {url} ({exc}); start redis-server there or fix broker_url "
            "(GAMMA_LAB_BROKER_URL or settings.toml; unset it for embedded mode)"
        )
        return EXIT_USAGE
    except BrokenPipeError:
        # the output went to `head` or `less`, which closed it: normal for a shell tool, not an error.
        # Point stdout at /dev/null so the interpreter's final flush does not complain again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except OSError as exc:  # a file made read-only behind our back (the folder checks catch the rest first)
        import errno

        from storage.diskspace import DiskFull, is_disk_full

        if is_disk_full(exc):  # one line naming the folder and what to do, not an ENOSPC traceback
            folder = os.environ.get("GAMMA_LAB_DATA") or "./data"
            _err(f"error: {exc if isinstance(exc, DiskFull) else DiskFull(folder)}")
            return EXIT_UNFINISHED
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        _err(
            f"error: cannot write {exc.filename or 'a file of the data folder'}: {exc.strerror}; make it writable "
            "for this user or set GAMMA_LAB_DATA to a writable folder (status and export only read)"
        )
        return EXIT_USAGE


def run() -> None:
    """The `gamma-lab` program (and `python -m app.cli`): main(), then leave without tearing every
    module down (pandas, pyarrow, DuckDB, SQLAlchemy: 0.1-0.2 s after `sweep --wait` had finished;
    bench/end_to_end.py). The exit handlers run and the output is flushed first; with a non-daemon
    thread still running (none of ours), the ordinary exit joins it."""
    code = main()
    if any(not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()  # logging's flush, temporary folders' cleanup, ...
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
