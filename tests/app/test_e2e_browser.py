"""End to end in a real browser: `gamma-lab serve` in a subprocess, headless Chromium through
Playwright. Launch the demo preset, wait until the phase portrait shows completed cells, click a
cell, open its trajectories, and save a screenshot of every page under the test's tmp_path (or the
folder in GAMMA_LAB_SHOTS). The README's pictures come from bench/screenshots.py, a richer sweep.

Waits are on elements becoming visible, never on the script state: live fragments keep the
script "running" for as long as the sweep is.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--disable-component-update",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
VIEWPORT = {"width": 1400, "height": 1300}  # Streamlit scrolls inside: the viewport is the picture
SWEEP_TIMEOUT_MS = 240_000  # the demo takes ~25 s alone; leave room for a busy shared machine
PAGE_TIMEOUT_MS = 60_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gamma-lab serve exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url}/_stcore/health did not answer within {timeout_s:.0f} s")


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (streamlit and the workers it started), SIGKILL if slow."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
    try:  # a child that outlived its parent still belongs to the group
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@contextmanager
def _serve(data: Path, log_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`gamma-lab serve` on a free port over `data`, in its own process group (all of it goes down
    on exit, even on failure); yields its URL and process."""
    port = _free_port()
    env = {**os.environ, "GAMMA_LAB_DATA": str(data), "PYTHONUNBUFFERED": "1"}
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url, proc
    finally:
        _stop_group(proc)
        log.close()
        print(f"--- {log_path.name}\n" + log_path.read_text(errors="replace")[-3000:])


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[str]:
    with _serve(tmp_path / "data", tmp_path / "serve.log") as (url, _proc):
        yield url


@pytest.fixture()
def page() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport=VIEWPORT)
        pg = context.new_page()
        pg.set_default_timeout(PAGE_TIMEOUT_MS)
        try:
            yield pg
        finally:
            context.close()
            browser.close()


def _no_exception(page) -> None:  # type: ignore[no-untyped-def]
    errors = page.locator('[data-testid="stException"]')
    assert errors.count() == 0, errors.first.inner_text()


@pytest.fixture()
def shots(tmp_path: Path) -> Path:
    """Where the screenshots go: $GAMMA_LAB_SHOTS if set, else the test's own tmp_path (never the
    committed docs/screenshots, which bench/screenshots.py takes from a real sweep)."""
    folder = Path(os.environ.get("GAMMA_LAB_SHOTS") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _shot(page, folder: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_timeout(800)  # let plotly finish its transition before the picture
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
    assert (folder / f"{name}.png").stat().st_size > 0


def _wait_for_figure(page) -> None:  # type: ignore[no-untyped-def]
    """A drawn plotly figure with at least one trace in it."""
    page.locator(".js-plotly-plot .main-svg").first.wait_for(state="visible")
    page.locator(".js-plotly-plot .scatterlayer .trace, .js-plotly-plot .heatmaplayer .hm").first.wait_for(
        state="attached"
    )


def test_launch_demo_watch_portrait_open_cell(server: str, page, shots: Path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    expect.set_options(timeout=PAGE_TIMEOUT_MS)
    page.goto(f"{server}/")  # Launch is the default page: its URL is the root
    expect(page.get_by_role("heading", name="Launch a sweep")).to_be_visible()
    name = page.get_by_label("Name")
    expect(name).to_have_value("quick-demo-mlp-mnist1d")
    _shot(page, shots, "launch")
    page.get_by_role("button", name="Launch", exact=True).click()
    # straight to the portrait that fills in (#10 item 8), saying which sweep was launched
    expect(page.get_by_role("heading", name="Phase portrait")).to_be_visible()
    expect(page.get_by_text("Launched sweep")).to_be_visible()
    _no_exception(page)
    page.wait_for_url(re.compile(r"sweep=[0-9a-f]+"))
    sweep_id = re.search(r"sweep=([0-9a-f]+)", page.url)
    assert sweep_id, page.url
    sweep_id = sweep_id.group(1)
    # The portrait's caption counts cells by status; every cell finished = none running/missing.
    expect(page.get_by_text(re.compile(r"ok: \d+ · diverged: \d+ · running: 0 · missing: 0"))).to_be_visible(
        timeout=SWEEP_TIMEOUT_MS
    )
    caption = page.get_by_text(re.compile(r"ok: \d+ · diverged")).inner_text()
    assert int(re.search(r"ok: (\d+)", caption).group(1)) > 0  # type: ignore[union-attr]
    _wait_for_figure(page)
    _no_exception(page)
    _shot(page, shots, "portrait")

    # Click a cell: the transparent click-target markers carry each cell's (γ, η).
    targets = (
        page.locator(".js-plotly-plot .scatterlayer .trace")
        .filter(has=page.locator("path.point"))
        .first.locator("path.point")
    )
    expect(targets.first).to_be_attached()
    assert targets.count() == 12  # the demo's 3 γ × 4 η cells, row-major over (η, γ)
    box = targets.nth(5).bounding_box()  # η index 1, γ index 2: γ=10, η=0.1
    assert box is not None
    # off the 18 px centre marker but inside the cell (cells are ~60+ px): a click anywhere selects
    page.mouse.click(box["x"] + box["width"] / 2 + 35, box["y"] + box["height"] / 2 + 18)
    cell_link = page.get_by_role("link", name="Open this cell's trajectories")
    expect(cell_link).to_be_visible()
    expect(page.get_by_text("Cell γ=10, η=0.1")).to_be_visible()
    cell_link.click()

    expect(page.get_by_role("heading", name="Trajectories")).to_be_visible()
    expect(page.get_by_text(re.compile(r"^1 runs · (done|diverged): 1$"))).to_be_visible()
    _wait_for_figure(page)
    assert page.locator(".js-plotly-plot .scatterlayer .trace").count() >= 1
    _no_exception(page)
    _shot(page, shots, "trajectories")

    for path, heading in (
        ("runs", "Runs"),
        ("overlays", "Overlays"),
        ("diagnostics", "Diagnostics"),
        ("compare", "Compare two sweeps"),
    ):
        page.goto(f"{server}/{path}?sweep={sweep_id}")
        expect(page.get_by_role("heading", name=heading)).to_be_visible()
        if path == "runs":
            expect(page.get_by_text(re.compile(r"^12 of 12 runs$"))).to_be_visible()
            page.locator('[data-testid="stDataFrame"]').first.wait_for(state="visible")
        else:
            _wait_for_figure(page)
        _no_exception(page)
        _shot(page, shots, path)


def test_launch_page_has_its_own_url(server: str, page) -> None:  # type: ignore[no-untyped-def]
    """Typing /launch (the page's name, as /runs or /portrait) opens the Launch page itself; it used
    to show Streamlit's "Page not found" dialog because the default page lives only at the root."""
    from playwright.sync_api import expect

    expect.set_options(timeout=PAGE_TIMEOUT_MS)
    for path in ("launch", ""):
        page.goto(f"{server}/{path}")
        expect(page.get_by_role("heading", name="Launch a sweep")).to_be_visible()
        expect(page.get_by_label("Name")).to_have_value("quick-demo-mlp-mnist1d")
        page.wait_for_timeout(500)  # the not-found dialog comes with the first page message
        expect(page.get_by_text("Page not found")).to_have_count(0)
        assert page.url.rstrip("/") == f"{server}/{path}".rstrip("/")
        _no_exception(page)


def test_sidebar_highlights_the_page_shown(server: str, page) -> None:  # type: ignore[no-untyped-def]
    """At /launch the sidebar highlighted no entry (the page running there is a hidden twin of the
    default Launch page); every URL highlights exactly its own entry."""
    from playwright.sync_api import expect

    expect.set_options(timeout=PAGE_TIMEOUT_MS)
    for path, heading, entry in (
        ("launch", "Launch a sweep", "Launch"),
        ("", "Launch a sweep", "Launch"),
        ("runs", "Runs", "Runs"),
    ):
        page.goto(f"{server}/{path}")
        expect(page.get_by_role("heading", name=heading)).to_be_visible()
        links = page.locator('[data-testid="stSidebar"] a')  # the menu's entries, however drawn
        expect(links).to_have_count(_menu_entries())
        page.mouse.move(700, 5)  # away from the sidebar: a hovered link is shaded too
        shaded = links.evaluate_all(
            "els => els.filter(e => getComputedStyle(e).backgroundColor !== 'rgba(0, 0, 0, 0)')"
            ".map(e => e.innerText.trim().split('\\n').pop().trim())"
        )
        assert shaded == [entry], (path, shaded)
        _no_exception(page)


def _menu_entries() -> int:
    """The sidebar's entries: app/main.py's pages that are not hidden (pages get added)."""
    text = (Path(__file__).parents[2] / "app" / "main.py").read_text()
    return text.count("st.Page(") - text.count('visibility="hidden"')


def _wait_owner(settings, role: str, group: int, timeout_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    """Until the owner lock names a live process of `group` with `role` (the deadline only stops a
    hung test)."""
    from storage.recorder import pid_alive, read_owner

    deadline = time.monotonic() + timeout_s
    while True:
        owner = read_owner(settings)
        if owner.role == role and owner.pid is not None and pid_alive(owner.pid):
            try:
                if os.getpgid(owner.pid) == group:
                    return
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            pytest.fail(f"no {role} of process group {group} records (owner: {owner})")
        time.sleep(0.1)


def test_second_dashboard_records_once_the_first_stops(tmp_path: Path, page, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Two dashboards on one data folder: the second one's portrait names the first (no traceback)
    and, once the first stops, draws the heatmap by itself (the fragment's timed retry takes
    recording over and reruns the page; AppTest never fires run_every, so only a browser tests it)."""
    from playwright.sync_api import expect

    from storage.recorder import read_owner
    from storage.settings import load_settings

    from .test_ui_store_held import seed_sweep

    expect.set_options(timeout=PAGE_TIMEOUT_MS)
    data = tmp_path / "data"
    monkeypatch.setenv("GAMMA_LAB_DATA", str(data))
    settings = load_settings()
    run_ids = seed_sweep(settings)  # a finished 2 γ × 2 η sweep; nobody records afterwards
    assert len(run_ids) == 4

    serve_a, serve_b = _serve(data, tmp_path / "serve-a.log"), _serve(data, tmp_path / "serve-b.log")
    with serve_a as (url_a, proc_a), serve_b as (url_b, proc_b):
        page.goto(f"{url_a}/portrait")  # A's first page starts its resources: A records
        expect(page.get_by_role("heading", name="Phase portrait")).to_be_visible()
        _wait_for_figure(page)
        _no_exception(page)
        _wait_owner(settings, "dashboard", proc_a.pid)

        page.goto(f"{url_b}/portrait")  # B only reads, and the metric store is A's
        held = page.locator('[data-testid="stAlert"]', has_text="Another process records the lab's results")
        expect(held).to_be_visible()
        message = held.locator('[data-testid="stMarkdownContainer"]').inner_text().strip()  # not the icon
        a_pid = read_owner(settings).pid
        assert f"another dashboard (pid {a_pid})" in message and "Two dashboards on one data folder" in message
        assert len(message.splitlines()) == 1, message
        expect(page.get_by_text("StoreLocked")).to_have_count(0)
        _no_exception(page)
        expect(page.locator(".js-plotly-plot .heatmaplayer .hm")).to_have_count(0)
        sidebar = page.locator('[data-testid="stSidebar"]')
        expect(sidebar.get_by_text("this dashboard only reads")).to_be_visible()

        _stop_group(proc_a)  # A goes: its lock is free, B's timed retry takes over (no reload)
        # a take-over attempt on each RETRY_S fragment tick, then the page's rerun: ~5 s here (it was
        # 12-14 s while the fragment waited out the page's 10 s throttle); PAGE_TIMEOUT_MS only stops a
        # hung test
        stopped = time.monotonic()
        _wait_for_figure(page)
        print(f"second dashboard showed the portrait {time.monotonic() - stopped:.1f} s after the first stopped")
        expect(held).to_have_count(0)
        expect(sidebar.get_by_text("recording in this dashboard")).to_be_visible()
        _no_exception(page)
        _wait_owner(settings, "dashboard", proc_b.pid)
