"""README screenshots from a real sweep: train it through the CLI, serve the dashboard, photograph
every page with headless Chromium into docs/screenshots/.

    python bench/screenshots.py                      # train (a few minutes on 2 cores), then shoot
    python bench/screenshots.py --data /tmp/shots    # reuse (or keep) a data folder: shoot again

The sweep (SPEC below) is an L=3 MLP of width 64 on MNIST-1D, 3000 online steps, γ from 1e-2 to 1e2 by
half decades and η from 1e-4 to 1e4 at two per decade (153 cells), one seed: enough cells to see the
lazy η_max ∝ γ² edge, the rich-side η* ∝ γ^(2/L) ridge and the η·t/γ collapse (54 s on 2 busy cores).
Not a test; prints the training time.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "docs" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--disable-component-update",
    "--no-first-run",
    "--disable-dev-shm-usage",
]  # as tests/app/test_e2e_browser.py
VIEWPORT = {"width": 1400, "height": 1300}
SPEC = """\
name = "mlp-L3-mnist1d-landscape"

[model]
arch = "mlp"
width = 64
depth = 3
activation = "relu"
centered = true

[data]
dataset = "mnist1d"

[train]
loss = "mse"
batch_size = 64
steps = {steps}
dtype = "auto"
eval_points = 30
metrics = ["test", "alignment", "sharpness", "movement"]
probe_size = 64

[grid]
gamma = {{ from = 0.01, to = 100.0, per_decade = 2 }}
eta = {{ from = 0.0001, to = 10000.0, per_decade = 2 }}
seeds = [0]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def train(data_dir: Path, steps: int) -> str:
    """Run the sweep through `gamma-lab sweep --wait`; returns its id (reuses a finished one)."""
    env = {**os.environ, "GAMMA_LAB_DATA": str(data_dir)}
    spec_path = data_dir / "landscape.toml"
    data_dir.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(SPEC.format(steps=steps), encoding="utf-8")
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "sweep", str(spec_path), "--wait"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"gamma-lab sweep failed ({done.returncode}): {done.stderr[-2000:]}")
    sweep_id = done.stdout.strip().splitlines()[-1]
    print(f"trained sweep {sweep_id} in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return sweep_id


def serve(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "GAMMA_LAB_DATA": str(data_dir), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gamma-lab serve exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("the dashboard did not answer within 120 s")


def _select_cell(page: Any, gamma_index: int, eta_index: int, n_gammas: int) -> None:
    """Click one portrait cell (its transparent click target; targets run row-major over (η, γ)),
    so the picture shows the selected cell outlined and its link to the trajectories."""
    targets = (
        page.locator(".js-plotly-plot .scatterlayer .trace")
        .filter(has=page.locator("path.point"))
        .first.locator("path.point")
    )
    box = targets.nth(eta_index * n_gammas + gamma_index).bounding_box()
    if box is None:
        raise RuntimeError("portrait: the cell to select is not drawn")
    # the mouse, as a user clicks (plotly selects the hovered point); then off the figure (its mode
    # bar) and the sidebar (its collapse button)
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.wait_for_timeout(300)  # plotly finds the hovered point on its next frame
    page.mouse.click(x, y)
    page.get_by_role("link", name="Open this cell's trajectories").wait_for(state="visible")
    page.mouse.move(VIEWPORT["width"] - 10, VIEWPORT["height"] - 10)  # over nothing that reacts to it


def _settle(page: Any, name: str, out: Path) -> None:
    """Wait for every figure on the page, then screenshot the whole page."""
    page.get_by_role("heading").first.wait_for(state="visible")
    errors = page.locator('[data-testid="stException"]')
    if errors.count():
        raise RuntimeError(f"page {name}: {errors.first.inner_text()}")
    plots = page.locator(".js-plotly-plot .main-svg")
    if name not in ("launch", "runs"):  # the pages with figures
        plots.first.wait_for(state="visible")
    if name == "portrait":  # γ = 10, η = 100 (of SPEC's 9 γ × 17 η): a cell near the η* ridge
        page.wait_for_timeout(1500)
        _select_cell(page, gamma_index=6, eta_index=12, n_gammas=9)
    # Not "networkidle": Streamlit's websocket and live fragments never let the network go idle.
    page.wait_for_timeout(2500)  # the page's last queries, plotly transitions, stale-element fade
    page.screenshot(path=str(out / f"{name}.png"), full_page=True)
    print(f"saved {out / f'{name}.png'}", file=sys.stderr, flush=True)


def shoot(url: str, sweep_id: str, out: Path, gamma: float) -> None:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    views = {
        "launch": "",
        "runs": f"runs?sweep={sweep_id}",
        "portrait": f"portrait?sweep={sweep_id}",
        # the online train loss is one fresh batch per step: an EMA shows its trend
        "trajectories": f"trajectories?sweep={sweep_id}&mode=row&gamma={gamma!r}&colour=eta&smooth=50",
        # test loss (held-out set, eval schedule) is smooth enough to judge a collapse by eye
        "overlays": f"overlays?sweep={sweep_id}&mode=ridge&x=eta_t_over_gamma&metric=test_loss",
        "diagnostics": f"diagnostics?sweep={sweep_id}&mode=ridge",
        "compare": f"compare?a={sweep_id}&b={sweep_id}&view=side",
    }
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.set_default_timeout(120_000)
        try:
            for name, path in views.items():
                page.goto(f"{url}/{path}")
                _settle(page, name, out)
        finally:
            context.close()
            browser.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help="data folder to train into / reuse (default: temporary)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--out", type=Path, default=SHOTS)
    p.add_argument("--gamma", type=float, default=10.0, help="the row of the trajectories view")
    args = p.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is not installed (apt-get install chromium)", file=sys.stderr)
        return 2
    # SIGTERM (a killed run) must still stop the dashboard started below: run the finally blocks.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="gamma-lab-shots-") as tmp:
        data_dir = args.data or Path(tmp) / "data"
        sweep_id = train(data_dir, args.steps)
        if not re.fullmatch(r"[0-9a-zA-Z_-]+", sweep_id):
            raise RuntimeError(f"unexpected sweep id {sweep_id!r}")
        port = _free_port()
        proc = serve(data_dir, port)
        try:
            shoot(f"http://127.0.0.1:{port}", sweep_id, args.out, args.gamma)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
