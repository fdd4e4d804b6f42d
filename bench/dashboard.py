"""Server-side render time of every dashboard page, on a small and a large store, side by side.

    python bench/dashboard.py            # 100 runs vs 10,000 runs, 1,000 points per run
    python bench/dashboard.py --quick    # smoke run: 16 vs 64 runs, 100 points per run

Each store is one sweep whose γ × η grid has `runs` cells (one seed), seeded quickly through the
storage APIs: the registry through add_runs and one bulk status update, the metric file through ONE MetricStore.ingest
of all points (one Arrow table), not one event per run. Each page is then rendered with
streamlit.testing.v1.AppTest (script execution on the server: queries, figure building and
serialization; not the browser's drawing): cold (right after the dashboard's read cache is cleared)
and warm (the same page again, as a live fragment or a widget change causes), a few times each; the
medians are reported. Prints numbers and the ratio large/small per page; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# first, even when ROOT is on PYTHONPATH already: this script's own folder (bench/, holding engine.py)
# comes before it and would shadow the engine package
sys.path.insert(0, str(ROOT))

MAIN = str(ROOT / "app" / "main.py")
PAGES = ("launch", "runs", "portrait", "trajectories", "overlays", "diagnostics", "compare")
EVAL_METRICS = ("test_loss", "test_acc", "alignment_ntk", "alignment_feature", "sharpness", "movement_l1",
                "movement_l2", "movement_l3")
DIVERGE_ABOVE = 3.0  # log10(η/γ²) above which a synthetic run "diverges" (the lazy η_max ∝ γ² edge)


def _grid(n_runs: int) -> tuple[np.ndarray, np.ndarray]:
    """A near-square γ × η grid with at least n_runs cells (extra cells dropped by the caller)."""
    n_g = int(math.ceil(math.sqrt(n_runs)))
    n_e = int(math.ceil(n_runs / n_g))
    return np.geomspace(1e-3, 1e2, n_g), np.geomspace(1e-4, 1e2, n_e)


def seed_store(data_dir: Path, n_runs: int, n_points: int) -> str:
    """One finished sweep of n_runs cells × ~n_points points each. Returns the sweep id."""
    from engine.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from storage.metric_store import MetricStore, PointsBatch
    from storage.registry import NewRun, Registry
    from storage.settings import load_settings

    settings = load_settings(data_dir=data_dir)
    settings.ensure_dirs()
    n_eval = max(2, n_points // 100)
    steps = n_points - n_eval * len(EVAL_METRICS)  # train_loss every step, the rest on the eval schedule
    model, data = ModelConfig(width=64, depth=3), DataConfig(dataset="mnist1d")
    train = TrainConfig(steps=steps, eval_points=n_eval)
    gammas, etas = _grid(n_runs)
    cells = [RunConfig(model=model, data=data, train=train, gamma=float(g), eta=float(e))
             for g in gammas for e in etas][:n_runs]
    spec = {"name": f"bench-{n_runs}", "model": {"arch": "mlp", "width": 64, "depth": 3},
            "data": {"dataset": "mnist1d"}, "train": {"steps": steps, "eval_points": n_eval},
            "grid": {"gamma": gammas.tolist(), "eta": etas.tolist(), "seeds": [0]}}
    registry = Registry(settings.registry_url)
    sweep_id = registry.create_sweep(spec["name"], "bench", spec)
    registry.add_runs(sweep_id, [NewRun.from_config(c) for c in cells])

    rng = np.random.default_rng(0)
    t = np.arange(steps, dtype=np.int64)  # (T,)
    eval_steps = np.unique(np.geomspace(1, steps, n_eval).astype(np.int64) - 1)  # (V,)
    batches, finished = [], []
    for c in cells:
        rate = 0.3 + 0.2 * math.tanh(math.log10(c.eta) + 1)  # a loss that falls faster at larger η
        loss = 0.1 * (1.0 + t) ** (-rate) * np.exp(0.05 * rng.standard_normal(steps))  # (T,)
        diverged = math.log10(c.eta / c.gamma**2) > DIVERGE_ABOVE
        dstep = None
        if diverged:
            dstep = int(rng.integers(1, 20))
            loss[dstep:] = np.inf
        ev = np.tile(loss[eval_steps], len(EVAL_METRICS))  # (V·M,)
        step = np.concatenate([t, np.tile(eval_steps, len(EVAL_METRICS))])
        metric = ["train_loss"] * steps + [m for m in EVAL_METRICS for _ in eval_steps]
        batches.append(PointsBatch(c.run_id, 0, 0, step, metric, np.concatenate([loss, ev])))
        summary = {"final_train_loss": float(loss[-1]), "best_train_loss": float(np.min(loss[np.isfinite(loss)])),
                   "final_test_loss": float(loss[-1]), "final_test_acc": 0.5}
        finished.append({"rid": c.run_id, "status": "diverged" if diverged else "done", "ended": time.time(),
                         "steps_done": steps if dstep is None else dstep, "diverged_step": dstep,
                         "summary": json.dumps(summary)})
    _finish_all(registry, sweep_id, finished)
    with MetricStore(settings.metrics_path) as store:
        store.ingest(batches)
        store.checkpoint()
    registry.close()
    return sweep_id


def _finish_all(registry: Any, sweep_id: str, rows: list[dict[str, Any]]) -> None:
    """Mark every run finished in ONE statement. Registry.finish per run re-counts the whole sweep
    each time (O(runs) per call, O(runs²) for a 10,000-run sweep: minutes), so the bench seeds the
    registry's own `runs` table with one executemany instead, then rolls the sweep status up once."""
    import sqlalchemy as sa

    from storage.registry import runs

    stmt = (runs.update().where(runs.c.run_id == sa.bindparam("rid"), runs.c.attempt == 0)
            .values(status=sa.bindparam("status"), ended=sa.bindparam("ended"),
                    steps_done=sa.bindparam("steps_done"), diverged_step=sa.bindparam("diverged_step"),
                    summary=sa.bindparam("summary")))
    with registry.engine.begin() as conn:
        conn.execute(stmt, rows)
        registry._refresh_sweeps(conn, [sweep_id])


def _clear_source_cache() -> None:
    """Forget the dashboard's in-process read cache (app.logic.source.DashboardSource), so the next
    render is cold: as for a user who opens a page nobody has looked at since the data changed."""
    from app.ui import resources

    resources().source.clear_cache()


def time_pages(data_dir: Path, repeats: int) -> dict[str, tuple[float, float]]:
    """Per page, median seconds of (cold render, warm rerender).

    cold: the page rendered right after the read cache was cleared (imports and Streamlit are warm:
    one render of every page comes first). warm: the same page rendered again unchanged, as a live
    fragment's tick or a widget change that keeps the data would cause."""
    from streamlit.testing.v1 import AppTest

    os.environ["GAMMA_LAB_DATA"] = str(data_dir)
    at = AppTest.from_file(MAIN, default_timeout=600)
    at.run()
    for page in PAGES:  # imports, first plotly figure, Streamlit's own caches
        at.switch_page(f"views/{page}.py")
        at.run()
    out: dict[str, tuple[float, float]] = {}
    for page in PAGES:
        at.switch_page(f"views/{page}.py")
        cold, warm = [], []
        for _ in range(repeats):
            _clear_source_cache()
            for samples in (cold, warm):
                start = time.perf_counter()
                at.run()
                samples.append(time.perf_counter() - start)
                if at.exception:
                    raise RuntimeError(f"page {page}: {at.exception[0].message}")
        out[page] = (statistics.median(cold), statistics.median(warm))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small stores, one repeat: a smoke run")
    p.add_argument("--small", type=int, default=100, help="runs in the small store")
    p.add_argument("--large", type=int, default=10_000, help="runs in the large store")
    p.add_argument("--points", type=int, default=1000, help="points per run")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if args.quick:
        args.small, args.large, args.points, args.repeats = 16, 64, 100, 1
    results: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="gamma-lab-bench-") as tmp:
        for n in (args.small, args.large):
            folder = Path(tmp) / f"store-{n}"
            start = time.perf_counter()
            seed_store(folder, n, args.points)
            print(f"seeded {n:,} runs × {args.points:,} points in {time.perf_counter() - start:.1f} s",
                  file=sys.stderr, flush=True)
            results[n] = time_pages(folder, args.repeats)
    small, large = results[args.small], results[args.large]
    print(f"{'page':<14}{f'{args.small:,} cold':>12}{f'{args.small:,} warm':>12}{f'{args.large:,} cold':>14}"
          f"{f'{args.large:,} warm':>14}{'ratio cold':>12}{'ratio warm':>12}   (seconds per render)")
    for page in PAGES:
        (sc, sw), (lc, lw) = small[page], large[page]
        print(f"{page:<14}{sc:>12.3f}{sw:>12.3f}{lc:>14.3f}{lw:>14.3f}{lc / sc:>12.2f}{lw / sw:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
