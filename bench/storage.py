"""Storage benchmark: DuckDB metric store vs a naive SQLAlchemy/SQLite store, measured side by side.

    python bench/storage.py            # 10,000 runs x 1,000 points = 10M rows
    python bench/storage.py --quick    # smoke run (seconds)

Measures (prints numbers and ratios, asserts nothing about time):
- ingest: Arrow bulk transactions into DuckDB (the recorder's path) vs one row per INSERT with a commit
  per row through SQLAlchemy into SQLite, as MLflow's SQL store logs metrics (on a subsample);
- heatmap: storage.queries.heatmap over the whole sweep vs the naive per-run "last value" lookups;
- trajectories: 100 runs x 1,000 points downsampled to 500 points each vs fetching every point per run
  and striding in Python.
Targets on the reference machine: ingest >= 1M rows/s; heatmap <= 100 ms; 100-run trajectories <= 200 ms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# This file is named storage.py: run as a script, its folder would shadow the storage package.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from storage.metric_store import MetricStore, PointsBatch  # noqa: E402
from storage.queries import QuerySource, heatmap, trajectories  # noqa: E402
from storage.registry import NewRun, Registry, runs, runs_frame  # noqa: E402


def _timed(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time in seconds over `repeat` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _load() -> str:
    """1/5/15-minute load averages: the machine is shared, so every result line needs this context."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _grid(n_runs: int) -> list[NewRun]:
    seeds = 10 if n_runs >= 100 else 1
    cells = n_runs // seeds
    n_gamma = max(1, int(np.sqrt(cells / 2.5)))
    n_eta = int(np.ceil(cells / n_gamma))
    out = []
    for i in range(n_runs):
        cell, seed = divmod(i, seeds)
        g = float(10 ** np.linspace(-3, 2, n_gamma)[cell % n_gamma])
        e = float(10 ** np.linspace(-4, 1, n_eta)[(cell // n_gamma) % n_eta])
        cfg = {"model": {"depth": 3, "width": 64}, "gamma": g, "eta": e, "seed": seed, "i": i}
        out.append(NewRun(f"run{i:08d}", cfg, "shape", g, e, seed))
    return out


def _values(i: int, points: int) -> np.ndarray:
    steps = np.arange(points)
    return (1.0 + 0.01 * (i % 7)) * np.exp(-steps / (points / 3)) + 0.001 * np.sin(steps + i)  # (P,)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--points", type=int, default=1_000)
    parser.add_argument("--baseline-rows", type=int, default=20_000, help="rows for the row-per-INSERT baseline")
    parser.add_argument("--runs-per-transaction", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 runs x 200 points")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.points, args.baseline_rows = 200, 200, 1_000
    tmp = Path(tempfile.mkdtemp(prefix="gamma-lab-bench-"))
    try:
        _run(args, tmp)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _run(args: argparse.Namespace, tmp: Path) -> None:
    n_traj = min(100, args.runs)
    print(f"storage bench: {args.runs} runs x {args.points} points = {args.runs * args.points:,} rows in {tmp}")
    print(f"load average at start {_load()} on {os.cpu_count()} cores (other processes slow every number below)")

    registry = Registry(f"sqlite:///{tmp / 'registry.sqlite'}")
    sid = registry.create_sweep("bench", "bench", {})
    grid = _grid(args.runs)
    registry.add_runs(sid, grid)
    with registry.engine.begin() as conn:  # set up, not measured: every run finished
        conn.execute(runs.update().values(status="done", steps_done=args.points))

    # -- ingest: DuckDB Arrow bulk transactions
    store = MetricStore(tmp / "metrics.duckdb")
    steps = np.arange(args.points, dtype=np.int64)
    names = ["train_loss"] * args.points
    t0 = time.perf_counter()
    for start in range(0, args.runs, args.runs_per_transaction):
        batch = [PointsBatch(r.run_id, 0, 0, steps, names, _values(start + j, args.points))
                 for j, r in enumerate(grid[start:start + args.runs_per_transaction])]
        store.ingest(batch)
    store.checkpoint()
    ingest_s = time.perf_counter() - t0
    duck_rate = args.runs * args.points / ingest_s

    # -- ingest baseline: one row per INSERT + commit through SQLAlchemy into SQLite (MLflow-style)
    base_engine = sa.create_engine(f"sqlite:///{tmp / 'naive.sqlite'}")
    meta = sa.MetaData()
    metrics = sa.Table(
        "metrics", meta, sa.Column("run_uuid", sa.String(32), primary_key=True),
        sa.Column("key", sa.String(250), primary_key=True), sa.Column("step", sa.BigInteger, primary_key=True),
        sa.Column("value", sa.Float), sa.Column("timestamp", sa.BigInteger))
    meta.create_all(base_engine)
    n_base = min(args.baseline_rows, args.runs * args.points)
    t0 = time.perf_counter()
    done = 0
    for r_i, r in enumerate(grid):
        vals = _values(r_i, args.points)
        for s in range(args.points):
            with base_engine.begin() as conn:
                conn.execute(metrics.insert().values(run_uuid=r.run_id, key="train_loss", step=s,
                                                     value=float(vals[s]), timestamp=0))
            done += 1
            if done >= n_base:
                break
        if done >= n_base:
            break
    naive_rate = done / (time.perf_counter() - t0)

    # the naive store for the query baselines holds the same rows (bulk loaded; not measured)
    with sqlite3.connect(tmp / "naive.sqlite") as raw:
        raw.execute("DELETE FROM metrics")
        for r_i, r in enumerate(grid):
            vals = _values(r_i, args.points)
            raw.executemany("INSERT INTO metrics VALUES (?, 'train_loss', ?, ?, 0)",
                            [(r.run_id, int(s), float(v)) for s, v in zip(steps, vals, strict=True)])

    source = QuerySource(store, registry)
    heat_s = _timed(lambda: heatmap(source, sid, metric="train_loss", stat="final", agg="mean"), 5)

    def naive_heatmap() -> pd.DataFrame:
        frame = runs_frame(registry, sweep_id=sid)
        last = []
        with base_engine.connect() as conn:
            for rid in frame["run_id"]:
                last.append(conn.execute(sa.select(metrics.c.value).where(
                    metrics.c.run_uuid == rid, metrics.c.key == "train_loss")
                    .order_by(metrics.c.step.desc()).limit(1)).scalar())
        frame["value"] = last
        return frame.groupby(["gamma", "eta"])["value"].mean().reset_index()

    naive_heat_s = _timed(naive_heatmap, 1 if not args.quick else 3)

    ids = [r.run_id for r in grid[:n_traj]]
    traj_s = _timed(lambda: trajectories(source, ids, metric="train_loss", max_points=500, log_x=True), 5)

    def naive_traj() -> list[pd.DataFrame]:
        out = []
        with base_engine.connect() as conn:
            for rid in ids:
                rows = conn.execute(sa.select(metrics.c.step, metrics.c.value).where(
                    metrics.c.run_uuid == rid, metrics.c.key == "train_loss").order_by(metrics.c.step)).all()
                frame = pd.DataFrame(rows, columns=["step", "value"])
                out.append(frame.iloc[:: max(1, len(frame) // 500)])
        return out

    naive_traj_s = _timed(naive_traj, 3)

    print(f"load average at end   {_load()}")
    print(f"ingest      duckdb {duck_rate / 1e6:8.2f} M rows/s   naive {naive_rate:10.0f} rows/s "
          f"(on {done:,} rows)   ratio {duck_rate / naive_rate:8.0f}x   target >= 1 M rows/s")
    print(f"heatmap     duckdb {heat_s * 1e3:8.1f} ms        naive {naive_heat_s * 1e3:10.1f} ms"
          f"{'':17}ratio {naive_heat_s / heat_s:8.1f}x   target <= 100 ms ({args.runs} runs)")
    print(f"trajectory  duckdb {traj_s * 1e3:8.1f} ms        naive {naive_traj_s * 1e3:10.1f} ms"
          f"{'':17}ratio {naive_traj_s / traj_s:8.1f}x   target <= 200 ms ({n_traj} runs x {args.points} pts)")
    store.close()
    registry.close()
    base_engine.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
