"""Time to a first portrait, as a newcomer meets it: open the dashboard, press Launch on the quick demo,
watch the portrait fill in. Cold local workers (GAMMA_LAB_WARM_WORKERS=0: each launch starts its
workers) against warm ones (`gamma-lab serve`'s default: the dashboard's workers wait with torch
imported), interleaved on fresh data folders, in one run (the machine's load hits both alike).

    python bench/first_portrait.py            # 5 launches each, medians
    python bench/first_portrait.py --runs 1   # smoke run

Per launch, from the click: `drawn`, the portrait's first heatmap on screen; `done`, its caption
counting every cell finished (running 0, missing 0). `estimate` is what Launch's "Check plan" said
before the click; `done/estimate` says how honest it was (the target: within 2x either way).
A browser user waits a few seconds on the form before pressing Launch (THINK_S, the same in both
arms). Prints numbers and the cold/warm ratios; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from screenshots import CHROMIUM, _free_port, serve  # noqa: E402

THINK_S = 4.0  # reading the form before pressing Launch
TIMEOUT_MS = 180_000


def _seconds(text: str) -> float:
    """The Launch page's "Estimated time" metric ("12 s", "1.5 min") in seconds."""
    m = re.match(r"([\d.]+)\s*(s|min)", text.strip())
    if not m:
        raise ValueError(f"cannot read the estimate {text!r}")
    return float(m.group(1)) * (60.0 if m.group(2) == "min" else 1.0)


def _workers_gone(data: Path, timeout_s: float = 30.0) -> None:
    """Until the dashboard's local workers have left (they follow it within a poll): the next launch
    must not share the cores with them."""
    from storage.settings import load_settings
    from tasks.local_queue import live_workers

    settings = load_settings(data_dir=data)
    deadline = time.monotonic() + timeout_s
    while live_workers(settings, prune=False) and time.monotonic() < deadline:
        time.sleep(0.2)


def launch_once(warm: bool, browser: Any) -> dict[str, float]:
    os.environ["GAMMA_LAB_WARM_WORKERS"] = "600" if warm else "0"
    with tempfile.TemporaryDirectory(prefix="gamma-lab-first-", ignore_cleanup_errors=True) as tmp:
        port = _free_port()
        proc = serve(Path(tmp) / "data", port)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        try:
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_role("heading", name="Launch a sweep").wait_for()
            time.sleep(THINK_S)
            page.get_by_role("button", name="Check plan").click()
            metric = page.locator('[data-testid="stMetric"]').filter(has_text="Estimated time")
            metric.locator('[data-testid="stMetricValue"]').wait_for()
            estimate = _seconds(metric.locator('[data-testid="stMetricValue"]').inner_text())
            start = time.perf_counter()
            page.get_by_role("button", name="Launch", exact=True).click()
            page.get_by_role("heading", name="Phase portrait").wait_for()
            page.locator(".js-plotly-plot .heatmaplayer .hm").first.wait_for(state="attached")
            drawn = time.perf_counter() - start
            page.get_by_text(re.compile(r"running: 0 · missing: 0")).wait_for()
            done = time.perf_counter() - start
        finally:
            page.close()
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
            _workers_gone(Path(tmp) / "data")
    return {"drawn": drawn, "done": done, "estimate": estimate}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5, help="launches per arm (default 5)")
    args = p.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is not installed (apt-get install chromium)", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            for i in range(args.runs):
                for arm in ("cold", "warm"):  # interleaved: a load change hits both
                    r = launch_once(arm == "warm", browser)
                    results[arm].append(r)
                    print(f"{arm} #{i + 1}: drawn {r['drawn']:.1f} s, done {r['done']:.1f} s, "
                          f"estimate {r['estimate']:.0f} s", flush=True)
        finally:
            browser.close()
    med = {arm: {k: statistics.median(r[k] for r in rs) for k in ("drawn", "done", "estimate")}
           for arm, rs in results.items()}
    for arm, m in med.items():
        print(f"{arm}: median drawn {m['drawn']:.1f} s, done {m['done']:.1f} s; done/estimate "
              f"{m['done'] / m['estimate']:.2f}")
    print(f"cold/warm: drawn {med['cold']['drawn'] / med['warm']['drawn']:.2f}x, "
          f"done {med['cold']['done'] / med['warm']['done']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
