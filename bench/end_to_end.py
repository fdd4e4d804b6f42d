"""Benchmark: a sweep end to end against the engine and the authors'-style loop (issue #13 item 5).
Prints times, ratios and a breakdown; asserts nothing about time.

In ONE run, side by side, on bench/engine.py's grid (36 cells: 6 γ × 3 η × 2 seeds, L = 3 MLP of
width 256, batch 128, 200 steps, MNIST-1D, float32), each round times:

  reference       bench/engine.py's authors'-style loop: one nn.Module, a frozen copy and one
                  torch.optim.SGD per cell, cells one after another, no diagnostics
  engine          engine.trainer.train_on_stream in this process (its data stream built first, timed
                  apart), with no costly metrics and with the defaults (test, alignment, sharpness,
                  movement at eval_points = 30)
  sweep --wait    the real CLI, `python -m app.cli sweep SPEC --wait`, in a fresh temporary data folder
                  (embedded mode: one local worker process, the spool bus, the CLI's own recorder), the
                  same 36 cells (their run ids are checked against the engine's), with no costly
                  metrics and with the defaults; and the same with a warm worker already waiting in
                  the folder (the dashboard's, `gamma-lab serve`: torch imported), which the sweep uses

and prints every time as a ratio to the reference measured in the same round (the reference is not
timed with diagnostics: it is the plain loop both targets are stated against). The sweep's time is
broken down from wall-clock timestamps: the worker's log (tasks.local_worker: its process start, when
torch and the engine were imported, each unit's begin and end) and the registry (each run's `ended`
is the time the recorder applied its finished event):

  CLI to worker start   the CLI's start-up and the specs' cheap check, then it spawns the worker
                        (app.cli.start_worker_early), before its own imports, plan and queueing
  worker imports        interpreter, torch and engine imports in the worker; the CLI plans and queues
                        meanwhile (when that was done is printed apart: "units queued", the runs'
                        `created` in the registry)
  claim                 ready to the unit's start (waiting for the CLI to queue it, claiming the file)
  unit                  data, model, training, diagnostics and publishing the events; the engine's own
                        time for the same work (data + training, measured in this process) beside it
  recording             the unit's end to the last run recorded as ended
  polling and exit      the last run recorded to the CLI's exit (the wait loop noticing, its teardown)

The machine may be shared: rounds are repeated (--repeat) and medians reported with each round's
ratio; the load average is printed.

    python bench/end_to_end.py               # the 36-cell grid, 2 rounds
    python bench/end_to_end.py --quick       # 6 cells, width 32, 20 steps, 1 round: a smoke run
    python bench/end_to_end.py --threads 1   # one torch thread here and in the worker
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on sys.path and bench/engine.py would shadow the
# engine package: drop that entry, and reach bench/engine.py as bench.engine from the repository root.
ROOT = Path(__file__).resolve().parents[1]
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.engine import FLUSH_EVERY, make_grid, reference_data, reference_run, warm_up  # noqa: E402
from engine.config import RunConfig, TrainConfig  # noqa: E402
from engine.data import make_stream  # noqa: E402
from engine.trainer import train_on_stream  # noqa: E402

DEFAULTS = TrainConfig()  # the costly metrics and eval points a sweep gets unless told otherwise
PHASES = ("cli_to_worker", "worker_imports", "claim", "unit", "recording", "polling_exit")
PHASE_LABELS = {
    "cli_to_worker": "CLI to worker start (CLI start-up, cheap spec check, spawn)",
    "worker_imports": "worker imports (interpreter, torch, engine)",
    "claim": "claim (worker ready to the unit's start: queueing, claim)",
    "unit": "unit (data, model, training, diagnostics, events)",
    "recording": "recording (unit end to the last run recorded)",
    "polling_exit": "polling and exit (last run recorded to the CLI's exit)",
}


def with_metrics(configs: list[RunConfig], costly: bool) -> list[RunConfig]:
    """The grid with no costly metrics, or with the defaults' metrics and eval points."""
    if not costly:
        return configs
    train = dataclasses.replace(configs[0].train, metrics=DEFAULTS.metrics, eval_points=DEFAULTS.eval_points)
    return [dataclasses.replace(c, train=train) for c in configs]


def spec_text(configs: list[RunConfig], costly: bool) -> str:
    """The sweep spec (TOML) whose cells are these configs (checked by run id in `sweep_wait`)."""
    c = configs[0]
    gammas = sorted({x.gamma for x in configs})
    etas = sorted({x.eta for x in configs})
    seeds = sorted({x.seed for x in configs})
    metrics = "" if costly else "eval_points = 0\nmetrics = []\n"
    return (
        f'name = "bench-end-to-end"\n[model]\narch = "mlp"\nwidth = {c.model.width}\ndepth = {c.model.depth}\n'
        f'[data]\ndataset = "{c.data.dataset}"\ninput_dim = {c.data.input_dim}\nn_classes = {c.data.n_classes}\n'
        f'[train]\nbatch_size = {c.train.batch_size}\nsteps = {c.train.steps}\ndtype = "{c.train.dtype}"\n{metrics}'
        f"[grid]\ngamma = {json.dumps(gammas)}\neta = {json.dumps(etas)}\nseeds = {json.dumps(seeds)}\n"
    )


def engine_alone(configs: list[RunConfig]) -> tuple[float, float, float]:
    """(data stream seconds, training seconds, CPU seconds) of the unit in this process, as the worker
    trains it."""
    first = configs[0]
    c0, t0 = time.process_time(), time.perf_counter()
    stream = make_stream(first.data, batch_size=first.train.batch_size, dtype=torch.float32)
    t1 = time.perf_counter()
    train_on_stream(configs, stream, flush_every=FLUSH_EVERY)
    return t1 - t0, time.perf_counter() - t1, time.process_time() - c0


def _log_times(path: Path) -> dict[str, float]:
    """The worker's wall-clock marks from its JSON log lines (tasks.local_worker): the earliest
    process start, ready and unit start, the latest unit end."""
    marks: dict[str, list[float]] = {}
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        for key in ("process_start", "ready", "unit_began", "unit_ended", "cpu_s"):
            if isinstance(record, dict) and isinstance(record.get(key), int | float):
                marks.setdefault(key, []).append(float(record[key]))
    return {key: (max(v) if key in ("unit_ended", "cpu_s") else min(v)) for key, v in marks.items()}


WARM = """
import os, sys
from storage.settings import load_settings
from tasks.local_queue import warm_up
print(warm_up(load_settings(), 300.0, parent=int(sys.argv[1])))
"""


def _warm_worker(data: Path, env: dict[str, str]) -> None:
    """A warm local worker in the data folder, as `gamma-lab serve` keeps them (tasks.local_queue.warm_up,
    waiting for work while this process lives), returned once it is ready (torch imported)."""
    subprocess.run([sys.executable, "-c", WARM, str(os.getpid())], env=env, cwd=ROOT, check=True, timeout=120,
                   capture_output=True)  # fmt: skip
    from tasks.planner import measured_throughput

    deadline = time.time() + 120
    # ready (torch imported), then done with its one-time calibration in a new data folder (it trains a
    # small ensemble to measure this machine: tasks.local_worker.calibrate), as a dashboard's workers are
    # after their first start: a sweep launched meanwhile would wait for it
    while "ready" not in _log_times(data / "queue" / "workers.log") or measured_throughput(data, "cpu").rate is None:
        if time.time() > deadline:
            raise SystemExit("the warm worker did not get ready in 120 s")
        time.sleep(0.05)
    time.sleep(0.2)  # from recording its measurement to waiting for work


def _stop_workers(data: Path) -> None:
    from storage.settings import load_settings
    from tasks.local_queue import live_workers

    for pid in live_workers(load_settings(data_dir=data), prune=False):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def sweep_wait(configs: list[RunConfig], costly: bool, threads: int, warm: bool = False) -> dict[str, float]:
    """`gamma-lab sweep --wait` on these cells in a fresh data folder: wall seconds and the breakdown.
    warm: with a warm worker already waiting there (the dashboard's, `gamma-lab serve`): no breakdown."""
    from storage.registry import Registry
    from storage.settings import load_settings
    from tasks.spec import SweepSpec

    text = spec_text(configs, costly)
    cells = SweepSpec.from_toml(text).cells()
    if sorted(c.run_id for c in cells) != sorted(c.run_id for c in configs):
        raise SystemExit("the sweep spec's cells are not the engine's configs (run ids differ)")
    with tempfile.TemporaryDirectory(prefix="gamma-lab-e2e-") as tmp:
        spec = Path(tmp) / "sweep.toml"
        spec.write_text(text)
        data = Path(tmp) / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GAMMA_LAB_")}
        env.update(GAMMA_LAB_DATA=str(data), GAMMA_LAB_WORKERS="1", GAMMA_LAB_TORCH_THREADS=str(threads),
                   GAMMA_LAB_LOG_FORMAT="json")  # fmt: skip
        if warm:
            _warm_worker(data, env)
        t0, cli0 = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            done = subprocess.run([sys.executable, "-m", "app.cli", "sweep", str(spec), "--wait"], env=env, cwd=ROOT,
                                  capture_output=True, text=True, timeout=1800)  # fmt: skip
        finally:
            t_exit, cli1 = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
            if warm:
                _stop_workers(data)
        cli_cpu = (cli1.ru_utime + cli1.ru_stime) - (cli0.ru_utime + cli0.ru_stime)
        if done.returncode != 0:
            raise SystemExit(f"gamma-lab sweep --wait failed ({done.returncode}): {done.stderr.strip()[-600:]}")
        marks = _log_times(data / "queue" / "workers.log")
        with Registry(load_settings(data_dir=data).registry_url) as reg:
            rows = reg.get_runs([c.run_id for c in configs])
        statuses = {r["status"] for r in rows}
        recorded = max(float(r["ended"]) for r in rows)
        queued = max(float(r["created"]) for r in rows)  # the CLI planned and queued them (beside the worker)
    out = {"wall": t_exit - t0, "statuses": statuses, "cli_cpu": cli_cpu, "queued": queued - t0}
    if "cpu_s" in marks:  # the CLI's CPU time and the worker's up to its unit's end (its teardown aside)
        out["cpu"] = cli_cpu + marks["cpu_s"]
    need = ("process_start", "ready", "unit_began", "unit_ended")
    if all(k in marks for k in need) and not warm:
        out.update(
            cli_to_worker=marks["process_start"] - t0,
            worker_imports=marks["ready"] - marks["process_start"],
            claim=marks["unit_began"] - marks["ready"],
            unit=marks["unit_ended"] - marks["unit_began"],
            recording=recorded - marks["unit_ended"],
            polling_exit=t_exit - recorded,
        )
    return out


def one_round(configs: list[RunConfig], dims: list[int], threads: int) -> dict[str, Any]:
    """Every arm once, back to back."""
    r: dict[str, Any] = {}
    c0, t0 = time.process_time(), time.perf_counter()
    data = reference_data(configs[0], "cpu")
    for c in configs:
        reference_run(c, dims, data, "cpu")
    r["reference"], r["reference_cpu"] = time.perf_counter() - t0, time.process_time() - c0
    for costly in (False, True):
        key = "defaults" if costly else "none"
        r[f"engine_data_{key}"], r[f"engine_train_{key}"], r[f"engine_cpu_{key}"] = engine_alone(
            with_metrics(configs, costly)
        )
        r[f"engine_{key}"] = r[f"engine_data_{key}"] + r[f"engine_train_{key}"]
        r[f"sweep_{key}"] = sweep_wait(with_metrics(configs, costly), costly, threads)
        r[f"sweep_warm_{key}"] = sweep_wait(with_metrics(configs, costly), costly, threads, warm=True)
    return r


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 6 cells, width 32, 20 steps, 1 round")
    ap.add_argument("--repeat", type=int, default=None, help="rounds of every arm, medians reported (default 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads here and in the worker")
    args = ap.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            ap.error(f"--threads must be an integer >= 1 (got {args.threads})")
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    grid = argparse.Namespace(cells=36, width=256, batch=128, steps=200, dataset="mnist1d")
    if args.quick:
        grid.cells, grid.width, grid.steps = 6, 32, 20  # 2 γ × 3 η: a full grid, as a spec makes
    repeat = args.repeat or (1 if args.quick else 2)
    configs = make_grid(grid)
    in_dim = make_stream(configs[0].data, batch_size=1).input_shape[0]
    dims = [in_dim, grid.width, grid.width, 10]
    load = os.getloadavg()
    print(f"grid: {len(configs)} cells, L=3 MLP {dims}, batch {grid.batch}, {grid.steps} steps, MNIST-1D, float32, "
          f"CPU ({os.cpu_count()} cores, {threads} torch thread(s) here and in the worker); {repeat} round(s); "
          f"defaults: metrics {', '.join(DEFAULTS.metrics)} at eval_points = {DEFAULTS.eval_points}")  # fmt: skip
    print(f"load average at start (1, 5, 15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"{datetime.now().astimezone().isoformat(timespec='seconds')}")  # fmt: skip
    warm_up(configs, dims, "cpu")
    rounds = []
    for i in range(repeat):
        r = one_round(configs, dims, threads)
        rounds.append(r)
        print(f"round {i + 1}: reference {r['reference']:.2f} s; engine {r['engine_none']:.2f} s "
              f"({r['reference'] / r['engine_none']:.1f}x), with the defaults {r['engine_defaults']:.2f} s "
              f"({r['reference'] / r['engine_defaults']:.1f}x); sweep --wait {r['sweep_none']['wall']:.2f} s "
              f"({r['reference'] / r['sweep_none']['wall']:.2f}x), with the defaults "
              f"{r['sweep_defaults']['wall']:.2f} s "
              f"({r['reference'] / r['sweep_defaults']['wall']:.2f}x)")  # fmt: skip
    load = os.getloadavg()
    print(f"load average at end (1, 5, 15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")

    def med(fn: Any) -> float:
        return float(np.median([fn(r) for r in rounds]))

    out: dict[str, float] = {"reference_s": med(lambda r: r["reference"])}
    print(f"---------------------------------------------------------------- medians of {repeat} round(s)")
    print(f"{'reference (authors-style loop)':<40} {out['reference_s']:8.2f} s   1.00x")
    for key, label in (("none", "no costly metrics"), ("defaults", "default costly metrics")):
        eng = med(lambda r, k=key: r[f"engine_{k}"])
        e2e = med(lambda r, k=key: r[f"sweep_{k}"]["wall"])
        out[f"engine_{key}_s"], out[f"sweep_{key}_s"] = eng, e2e
        out[f"engine_{key}_ratio"] = med(lambda r, k=key: r["reference"] / r[f"engine_{k}"])
        out[f"sweep_{key}_ratio"] = med(lambda r, k=key: r["reference"] / r[f"sweep_{k}"]["wall"])
        each = ", ".join(f"{r['reference'] / r[f'sweep_{key}']['wall']:.2f}" for r in rounds)
        print(f"{'engine, ' + label:<40} {eng:8.2f} s {out[f'engine_{key}_ratio']:6.2f}x   "
              f"(data {med(lambda r, k=key: r[f'engine_data_{k}']):.2f} s)")  # fmt: skip
        print(f"{'sweep --wait, ' + label:<40} {e2e:8.2f} s {out[f'sweep_{key}_ratio']:6.2f}x   (rounds: {each})")
        warm = med(lambda r, k=key: r[f"sweep_warm_{k}"]["wall"])
        out[f"sweep_warm_{key}_s"] = warm
        out[f"sweep_warm_{key}_ratio"] = med(lambda r, k=key: r["reference"] / r[f"sweep_warm_{k}"]["wall"])
        each = ", ".join(f"{r['reference'] / r[f'sweep_warm_{key}']['wall']:.2f}" for r in rounds)
        print(f"{'  the same, a warm worker waiting':<40} {warm:8.2f} s {out[f'sweep_warm_{key}_ratio']:6.2f}x   "
              f"(rounds: {each}; the dashboard's workers, gamma-lab serve)")  # fmt: skip
    for key, label in (("none", "no costly metrics"), ("defaults", "default costly metrics")):
        if not all(p in r[f"sweep_{key}"] for r in rounds for p in PHASES):
            print(f"breakdown, {label}: the worker's log had no timestamps")
            continue
        total = out[f"sweep_{key}_s"]
        print(f"-- breakdown of sweep --wait, {label} (medians; the phases need not sum to the median wall)")
        for p in PHASES:
            v = med(lambda r, k=key, ph=p: r[f"sweep_{k}"][ph])
            out[f"{key}_{p}_s"] = v
            beside = f"   (engine here: {out[f'engine_{key}_s']:.2f} s)" if p == "unit" else ""
            print(f"   {PHASE_LABELS[p]:<62} {v:7.2f} s  {v / total:6.1%}{beside}")
        out[f"{key}_queued_s"] = med(lambda r, k=key: r[f"sweep_{k}"]["queued"])
        print(f"   (units queued {out[f'{key}_queued_s']:.2f} s after the CLI's start, beside the worker's imports)")
        overhead = total - out[f"engine_{key}_s"]
        print(f"   beyond the engine's own time: {overhead:.2f} s ({overhead / out[f'engine_{key}_s']:.0%} of it)")
    if all("cpu" in r[f"sweep_{k}"] for r in rounds for k in ("none", "defaults")):
        # the steadier clock on a shared machine: other jobs' load stretches wall time, not CPU time
        # (with one torch thread the CPU time is the work done; with more it counts their spinning too)
        print("-- CPU seconds (this process for the reference and the engine; the CLI plus its worker for the "
              "sweep), ratios to the reference's")
        out["reference_cpu_s"] = med(lambda r: r["reference_cpu"])
        for key, label in (("none", "no costly metrics"), ("defaults", "default costly metrics")):
            out[f"engine_{key}_cpu_ratio"] = med(lambda r, k=key: r["reference_cpu"] / r[f"engine_cpu_{k}"])
            out[f"sweep_{key}_cpu_ratio"] = med(lambda r, k=key: r["reference_cpu"] / r[f"sweep_{k}"]["cpu"])
            out[f"sweep_{key}_cli_cpu_s"] = med(lambda r, k=key: r[f"sweep_{k}"]["cli_cpu"])
            eng_cpu = med(lambda r, k=key: r[f"engine_cpu_{k}"])
            e2e_cpu = med(lambda r, k=key: r[f"sweep_{k}"]["cpu"])
            print(f"   {label:<24} engine {eng_cpu:7.2f} s {out[f'engine_{key}_cpu_ratio']:5.2f}x;  sweep --wait "
                  f"{e2e_cpu:7.2f} s {out[f'sweep_{key}_cpu_ratio']:5.2f}x "
                  f"(the CLI's share {out[f'sweep_{key}_cli_cpu_s']:.2f} s)")  # fmt: skip
        print(f"   reference {out['reference_cpu_s']:.2f} s")
    statuses = sorted({s for r in rounds for k in ("none", "defaults") for s in r[f"sweep_{k}"]["statuses"]})
    print(f"run statuses in the sweeps: {', '.join(statuses)}")
    out = {k: v for k, v in out.items() if math.isfinite(v)}
    print("RESULT " + json.dumps(out, sort_keys=True))
    return out


if __name__ == "__main__":
    main()
