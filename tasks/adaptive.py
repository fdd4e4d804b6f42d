"""The adaptive protocol (`adaptive = true`), in rounds.

Reference protocol (Atanasov et al.): for each γ, start at the top of the η grid and walk down until
training stops diverging — that η is η_max — then train only the η's from η_max down to
η_max / 10^below_max_decades. Doing it one cell at a time wastes the ensemble, so here each round
takes the next ETAS_PER_ROUND η's of *every* unresolved γ at once (one batch of work units), and once
a γ's η_max is known its whole remaining range goes in the next round.

A cell counts as diverged when any of its seeds diverged (the conservative choice: η_max is where
every seed trains). Failed/lost/cancelled cells carry no information and count as not diverged.

`python -m tasks.adaptive SWEEP_ID --executor local` is the detached driver tasks.api starts; it
runs a recorder in-process when none is running (it needs statuses to plan the next round).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

from engine.analysis import eta_max
from storage.settings import Settings

log = logging.getLogger("gamma_lab.adaptive")
ETAS_PER_ROUND = 2
TERMINAL = ("done", "diverged", "failed", "cancelled", "lost")


def plan_gamma(etas: Sequence[float], tried: dict[float, bool], below_max_decades: float,
               per_round: int = ETAS_PER_ROUND) -> tuple[list[float], float | None]:
    """One γ: the η's to run next and η_max if known. `tried` maps η -> diverged for cells done.

    Returns ([], η_max) when this γ is finished. η_max is None while unknown (or when every η of the
    grid diverged).
    """
    desc = sorted(etas, reverse=True)
    found = None
    if tried:
        asc = sorted(tried)
        found = eta_max(asc, [tried[e] for e in asc])
    if found is not None:
        floor = found / 10**below_max_decades * (1 - 1e-9)
        return [e for e in desc if e not in tried and floor <= e < found], found
    untried = [e for e in desc if e not in tried and (not tried or e < min(tried))]
    return untried[:per_round], None


def run(sweep_id: str, settings: Settings, *, executor: str = "local", rerun: bool = False,
        device: str | None = None, poll_s: float = 0.5) -> dict[float, float | None]:
    """Drive an adaptive sweep to the end. Returns η_max per γ."""
    from storage.registry import Registry
    from tasks import local_queue
    from tasks.api import _driver_file, queue_cells
    from tasks.spec import SweepSpec, grid_size_error

    with Registry(settings.registry_url) as reg:
        sweep = reg.get_sweep(sweep_id)
    if sweep is None:
        raise SystemExit(f"no sweep {sweep_id!r}")
    spec = SweepSpec.from_dict(sweep["spec"])
    grid = spec.grid
    too_big = grid_size_error(len(grid.gammas), len(grid.etas), len(grid.seeds), settings.max_cells)
    if too_big is not None:  # submit refuses these; a sweep stored by an older version is not expanded
        raise SystemExit(f"sweep {sweep_id}: {too_big}")
    tried: dict[float, dict[float, bool]] = {g: {} for g in grid.gammas}
    result: dict[float, float | None] = {}
    stop_file = _driver_file(settings, sweep_id).with_suffix(".stop")
    round_no = 0
    while not stop_file.exists():
        cells = []
        for g in grid.gammas:
            todo, found = plan_gamma(grid.etas, tried[g], grid.below_max_decades)
            result[g] = found
            cells += [spec.cell(g, e, s) for e in todo for s in grid.seeds]
        if not cells:
            break
        round_no += 1
        log.info("round %d: %d cells", round_no, len(cells))
        queue_cells(settings, sweep_id, cells, executor=executor, rerun=rerun, device=device)
        ids = {c.run_id: c for c in cells}
        with Registry(settings.registry_url) as reg:
            checked = time.monotonic()
            while not stop_file.exists():
                rows = reg.get_runs(list(ids))
                if all(r["status"] in TERMINAL for r in rows):
                    break
                if executor == "local" and time.monotonic() - checked > 2.0:  # a killed worker's unit
                    checked = time.monotonic()
                    for line in local_queue.supervise(settings).lines():
                        log.warning("%s", line)
                time.sleep(poll_s)
        for r in rows:
            cell_div = tried[r["gamma"]].get(r["eta"], False)
            tried[r["gamma"]][r["eta"]] = cell_div or r["status"] == "diverged"
    return result


def main(argv: list[str] | None = None) -> int:
    from storage.settings import load_settings
    from tasks.api import _driver_file

    parser = argparse.ArgumentParser(prog="python -m tasks.adaptive")
    parser.add_argument("sweep_id")
    parser.add_argument("--executor", default="local")
    parser.add_argument("--device", default=None)
    parser.add_argument("--rerun", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from storage.recorder import start_if_free

    settings = load_settings()
    recorder = start_if_free(settings)
    try:
        found = run(args.sweep_id, settings, executor=args.executor, rerun=args.rerun, device=args.device)
        log.info("eta_max per gamma: %s", found)
    finally:
        if recorder is not None:
            recorder.stop()
        for suffix in (".pid", ".stop"):
            _driver_file(settings, args.sweep_id).with_suffix(suffix).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
