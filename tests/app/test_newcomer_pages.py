"""Issue 10, items 5, 10 and 13: Diagnostics of a sweep without the costly metrics, diverged curves on
Trajectories and Overlays, and what Streamlit itself showed a newcomer (toolbar, 404s, clipped tables,
the heatmap below the fold).

The pages run through AppTest on a store seeded by the real publisher and recorder: one sweep that
recorded train_loss only (train.metrics = ["test"], as the CLI demo), whose η = 1 runs climb to a loss
of 1e5–1e6 and diverge while the others stay within 0.07–0.1. The browser checks start the real
`gamma-lab serve` and Chromium at 1280×800 (tests/app/test_e2e_browser.py's helpers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from .plotly_json import arr
from .test_newcomer_views import _figures, _page

GAMMAS = (0.1, 1.0)
ETAS = (0.01, 0.1, 1.0)
STEPS = 60
DIVERGED_AT = 40
pytestmark = pytest.mark.slow


def _loss(eta: float, gamma: float) -> np.ndarray:
    """(STEPS,) train loss: 0.1 falling to 0.07 for η < 1; at η = 1 a climb from 0.1 to 1e6·γ (1e5 at
    γ = 0.1, 1e6 at γ = 1) by step DIVERGED_AT - 1, then nothing (the run diverged there)."""
    t = np.arange(STEPS, dtype=float)
    if eta < 1.0:
        return 0.07 + 0.03 * np.exp(-t * eta)
    top = 1e6 * gamma
    out = 0.1 * (top / 0.1) ** (t / (DIVERGED_AT - 1))
    return out[:DIVERGED_AT]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> dict:
    return seed(tmp_path_factory.mktemp("newcomer-pages"))


def seed(data: Path) -> dict:
    """Fill the data folder `data` (see the module's docstring); returns data, sweep and the diverged run ids."""
    from engine.config import ModelConfig, RunConfig
    from storage.bus import open_publisher
    from storage.recorder import Recorder
    from storage.registry import Registry
    from storage.settings import load_settings

    settings = load_settings(data_dir=data, workers=1)
    settings.ensure_dirs()
    reg = Registry(settings.registry_url)
    pub = open_publisher(settings)
    spec = {"model": {"depth": 3, "width": 8}, "train": {"steps": STEPS, "metrics": ["test"]}}
    sid = reg.create_sweep("newcomer-pages", "t", spec)
    configs = [RunConfig(model=ModelConfig(width=8, depth=3), gamma=g, eta=e, seed=0) for g in GAMMAS for e in ETAS]
    reg.add_runs(sid, configs)
    diverged = []
    for c in configs:
        pub.started(c.run_id, 0, "w")
        value = _loss(c.eta, c.gamma)
        pub.points(c.run_id, 0, np.arange(value.size), ["train_loss"] * value.size, value)
        if c.eta == 1.0:
            diverged.append(c.run_id)
            pub.finished(c.run_id, 0, "diverged", steps_done=DIVERGED_AT, diverged_step=DIVERGED_AT)
        else:
            pub.finished(c.run_id, 0, "done", steps_done=STEPS)
    with Recorder(settings) as rec:
        rec.drain()
    reg.close()
    return {"data": data, "sweep": sid, "diverged": diverged}


# ---------------------------------------------------------------- 5. Diagnostics without the costly metrics


def test_diagnostics_says_which_metrics_the_sweep_did_not_record_and_how(seeded, monkeypatch):
    at = _page(seeded, monkeypatch, "diagnostics", sweep=seeded["sweep"], mode="cell")
    note = "\n".join(w.value for w in at.warning)
    for name in ("alignment", "sharpness", "movement"):
        assert name in note, note
    assert "Costly metrics on the eval schedule" in note and "train.metrics = [" in note, note
    assert "allowed names: test, alignment, sharpness, movement" in note, note
    infos = "\n".join(i.value for i in at.info)
    assert "did not record sharpness" in infos and "did not record movement" in infos, infos
    assert "did not record alignment" in infos, infos
    # only the loss chart is drawn: no blank sharpness or movement chart
    assert len(_figures(at)) == 1


def test_diagnostics_of_a_sweep_with_every_metric_says_nothing(seeded):
    from app.logic.diagnostics import unrecorded

    assert unrecorded({"train": {}}) == [] and unrecorded(None) == []
    assert unrecorded({"train": {"metrics": ["test", "sharpness"]}}) == ["alignment", "movement"]


# ---------------------------------------------------------------- 10. diverged curves and the y-range


def _check_fitted_range(fig: dict, diverged: list[str]) -> None:
    y_axis = fig["layout"]["yaxis"]
    lo, hi = y_axis["range"]  # log10 units
    assert np.log10(0.06) < lo < np.log10(0.07) and np.log10(0.1) < hi < np.log10(0.12), (lo, hi)
    marks = next(t for t in fig["data"] if t.get("name") == "diverged")
    assert sorted(diverged) == sorted(r for text in marks["hovertext"] for r in diverged if r in text)
    np.testing.assert_allclose(np.log10(arr(marks["y"])), hi)  # at the top edge
    assert marks.get("showlegend", True) is not False  # a legend entry


def test_trajectories_fits_the_range_to_curves_that_did_not_diverge(seeded, monkeypatch):
    at = _page(seeded, monkeypatch, "trajectories", sweep=seeded["sweep"])
    at.selectbox(key="traj.mode").set_value("pick").run()
    at.multiselect(key="traj.runs").set_value(at.multiselect(key="traj.runs").options).run()
    assert not at.exception, at.exception
    (fig,) = _figures(at)
    _check_fitted_range(fig, seeded["diverged"])
    marks = next(t for t in fig["data"] if t.get("name") == "diverged")
    np.testing.assert_allclose(np.sort(arr(marks["x"])), [DIVERGED_AT + 1] * len(seeded["diverged"]))  # x = t + 1


def test_overlays_fits_the_range_to_curves_that_did_not_diverge(seeded, monkeypatch):
    at = _page(seeded, monkeypatch, "overlays", sweep=seeded["sweep"])
    at.radio(key="overlay.mode").set_value("pick").run()
    at.multiselect(key="overlay.runs").set_value(at.multiselect(key="overlay.runs").options).run()
    assert not at.exception, at.exception
    _check_fitted_range(_figures(at)[-1], seeded["diverged"])


# ---------------------------------------------------------------- 13. what Streamlit showed a newcomer (browser)

VIEWPORT = {"width": 1280, "height": 800}
# Streamlit's frontend finds its server by trying the page's own path first, then its parent (utils
# getPossibleBaseUris, two candidates): a direct load of /runs asks /runs/_stcore/health and
# /runs/_stcore/host-config (404) before /_stcore/health (200). It is decided in Streamlit's bundled
# JavaScript before any of our code runs; no setting of ours changes it.
PROBES = ("_stcore/health", "_stcore/host-config")


@pytest.fixture(scope="module")
def browser_page(seeded, tmp_path_factory):
    from .test_e2e_browser import CHROMIUM, CHROMIUM_ARGS, PAGE_TIMEOUT_MS, _serve

    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    logs = tmp_path_factory.mktemp("serve")
    with _serve(seeded["data"], logs / "serve.log") as (url, _proc), sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_context(viewport=VIEWPORT).new_page()
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        failed: list[tuple[int, str]] = []
        page.on("response", lambda r: r.status >= 400 and failed.append((r.status, r.url)))
        try:
            yield url, page, failed
        finally:
            browser.close()


def _open(browser_page, path: str, ready: str):  # type: ignore[no-untyped-def]
    url, page, failed = browser_page
    failed.clear()
    page.goto(f"{url}/{path}")
    page.locator(ready).first.wait_for(state="visible")
    page.wait_for_timeout(1500)  # let the grid and plotly settle
    assert page.locator('[data-testid="stException"]').count() == 0
    return url, page, failed


def test_no_deploy_button_nor_developer_menu(browser_page):
    _url, page, _failed = _open(browser_page, "runs", '[data-testid="stDataFrame"]')
    assert page.locator('[data-testid="stAppDeployButton"]').count() == 0
    assert page.get_by_text("Deploy", exact=True).count() == 0
    menu = page.locator('[data-testid="stMainMenu"]')
    if menu.count():  # viewer mode keeps a small menu (print, about): no developer entries in it
        menu.first.click()
        page.wait_for_timeout(500)
        for entry in ("Clear cache", "Developer options", "Deploy this app"):
            assert page.get_by_text(entry).count() == 0, entry
        page.keyboard.press("Escape")


def test_direct_page_load_404s_are_only_streamlits_base_path_probe(browser_page):
    url, _page, failed = _open(browser_page, "runs", '[data-testid="stDataFrame"]')
    assert all(status == 404 for status, _ in failed), failed
    assert {u for _, u in failed} <= {f"{url}/runs/{p}" for p in PROBES}, failed


def test_runs_tables_fit_the_page_at_1280(browser_page, seeded):
    _url, page, _failed = _open(browser_page, f"runs?sweep={seeded['sweep']}", '[data-testid="stDataFrame"]')
    tables = page.locator('[data-testid="stDataFrame"]')
    assert tables.count() == 2
    for i in range(2):
        tables.nth(i).locator(".dvn-scroller").wait_for(state="attached")
        scroll, visible = tables.nth(i).locator(".dvn-scroller").evaluate("e => [e.scrollWidth, e.clientWidth]")
        assert scroll <= visible + 1, (i, scroll, visible)  # no column cut off on the right


@pytest.mark.parametrize("stat", ["final", "steps_to", "at_step"])
def test_portrait_heatmap_in_view_at_1280x800(browser_page, seeded, stat):
    _url, page, _failed = _open(
        browser_page, f"portrait?sweep={seeded['sweep']}&stat={stat}", ".js-plotly-plot .heatmaplayer"
    )
    box = page.locator(".js-plotly-plot .heatmaplayer").first.bounding_box()
    assert box["y"] < VIEWPORT["height"] and box["y"] + box["height"] <= VIEWPORT["height"], box
