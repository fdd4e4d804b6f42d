"""Issue 12 in a real browser: `gamma-lab serve` with local accounts (GAMMA_LAB_AUTH=local) and
headless Chromium. Nothing of the lab shows before a login; a wrong password is refused; bob, logged
in, finds Cancel disabled on alice's sweep with the reason, cancels his own (its run ends cancelled
in the registry), stays logged in across a reload (the signed cookie) until he logs out, and the audit trail names him.

Users and sweeps are made with the CLI as a lab's people would (`gamma-lab user add`, the password
on stdin; `gamma-lab sweep` with GAMMA_LAB_USER naming the launcher). One local worker trains alice's
long run the whole time, so bob's sweep waits queued until he cancels it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.app.test_e2e_browser import CHROMIUM, CHROMIUM_ARGS, PAGE_TIMEOUT_MS, _serve
from tests.faults.conftest import base_env, cli, kill_local_workers, small_spec, wait_for

pytestmark = pytest.mark.slow

PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-22"}
LAB_ENV = {  # base_env's quiet single-worker lab, plus local accounts
    "GAMMA_LAB_AUTH": "local",
    "GAMMA_LAB_WORKERS": "1",
    "GAMMA_LAB_TORCH_THREADS": "1",
    "GAMMA_LAB_HEARTBEAT_S": "1",
}


def _lab(tmp_path: Path, data: Path, registry_url: str) -> dict[str, str]:
    """Users alice and bob; one sweep each (different cells: runs are shared by cell). Returns
    launcher -> sweep id."""
    env = base_env(data, **LAB_ENV, GAMMA_LAB_REGISTRY_URL=registry_url)
    for name, password in PASSWORDS.items():
        added = cli(env, "user", "add", name, stdin=password + "\n")
        assert added.returncode == 0, added.stderr
    ids = {}
    for name, eta in (("alice", 0.01), ("bob", 0.02)):
        spec = tmp_path / f"{name}.toml"
        spec.write_text(small_spec(f"{name}-sweep", etas=(eta,), steps=1_000_000, eval_points=2))
        launched = cli({**env, "GAMMA_LAB_USER": name}, "sweep", str(spec))
        assert launched.returncode == 0, launched.stderr
        ids[name] = launched.stdout.split()[-1]
    return ids


def _registry(url: str):  # type: ignore[no-untyped-def]
    from storage.registry import Registry

    return Registry(url)


def _show_sweep(page, name: str) -> None:  # type: ignore[no-untyped-def]
    """Narrow the Runs page to one sweep by the search filter (the sweep picker follows)."""
    search = page.get_by_role("textbox", name="Search")
    search.fill(name)
    search.press("Enter")
    page.get_by_text("1 of 2 sweeps").wait_for()


def test_login_owner_rules_cookie_and_audit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry_url: str) -> None:
    """On an SQLite registry and on PostgreSQL (tests/conftest.py registry_url)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    expect = sync_api.expect
    data = tmp_path / "data"
    try:
        ids = _lab(tmp_path, data, registry_url)
        for key, value in {**LAB_ENV, "GAMMA_LAB_REGISTRY_URL": registry_url}.items():  # _serve passes them on
            monkeypatch.setenv(key, value)
        with _serve(data, tmp_path / "serve.log") as (url, _proc), sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            expect.set_options(timeout=PAGE_TIMEOUT_MS)

            page.goto(f"{url}/runs")
            login = page.get_by_role("button", name="Log in")
            expect(login).to_be_visible()
            expect(page.get_by_role("link", name="Runs")).to_have_count(0)  # no menu, no page: only the form
            expect(page.get_by_text("alice-sweep")).to_have_count(0)

            page.get_by_role("textbox", name="User name").fill("bob")
            page.get_by_role("textbox", name="Password").fill("not-his-password")
            login.click()
            expect(page.get_by_text("wrong user name or password")).to_be_visible()
            expect(page.get_by_text("Logged in as")).to_have_count(0)

            page.get_by_role("textbox", name="Password").fill(PASSWORDS["bob"])
            page.get_by_role("button", name="Log in").click()
            expect(page.get_by_text("Logged in as bob")).to_be_visible()
            expect(page.get_by_role("heading", name="Runs")).to_be_visible()  # the page the link asked for
            wait_for(
                lambda: any(c["name"] == "gamma_lab_session" for c in page.context.cookies()), 30, "the session cookie"
            )

            _show_sweep(page, "alice-sweep")
            cancel = page.get_by_role("button", name="Cancel sweep")
            expect(cancel).to_be_disabled()
            reason = f"only the launcher (alice) or an admin may cancel sweep {ids['alice']}; you are bob"
            expect(page.get_by_text(reason)).to_be_visible()

            _show_sweep(page, "bob-sweep")
            expect(cancel).to_be_enabled()
            cancel.click()
            expect(page.get_by_text(re.compile(f"Cancel requested for {ids['bob']}"))).to_be_visible()
            with _registry(registry_url) as reg:
                statuses = lambda sweep: {r["status"] for r in reg.list_runs(sweep)}  # noqa: E731
                wait_for(lambda: statuses(ids["bob"]) == {"cancelled"}, 60, "bob's runs cancelled")
                assert statuses(ids["alice"]) <= {"queued", "running"}

            page.reload()
            expect(page.get_by_text("Logged in as bob")).to_be_visible()
            expect(page.get_by_role("heading", name="Runs")).to_be_visible()
            expect(page.get_by_role("button", name="Log in")).to_have_count(0)

            page.get_by_role("button", name="Log out").click()
            expect(page.get_by_role("button", name="Log in")).to_be_visible()
            wait_for(
                lambda: all(c["name"] != "gamma_lab_session" for c in page.context.cookies()), 30, "the cookie cleared"
            )
            page.reload()
            expect(page.get_by_role("button", name="Log in")).to_be_visible()
            expect(page.get_by_text("Logged in as")).to_have_count(0)
            browser.close()

        from storage.audit import trail

        with _registry(registry_url) as reg:
            cancels = [(e["actor"], e["action"]) for e in trail(reg, target=ids["bob"])]
            logins = [(e["actor"], e["action"]) for e in trail(reg, actor="bob")]
        assert ("bob", "cancel") in cancels
        assert ("bob", "launch") in cancels
        assert {("bob", "login-failed"), ("bob", "login"), ("bob", "logout")} <= set(logins)
    finally:
        kill_local_workers(data)
