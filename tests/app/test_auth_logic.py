"""The dashboard's issue-12 parts without a browser: the session cookie's text, which login methods a
lab asks for, whom a login acts as (admin from the users table: SQLite and PostgreSQL), the Runs
page's sweep filters (app/logic/source.filter_sweeps), and the gate itself through AppTest (the
identity-provider button, which the browser test cannot reach without a provider)."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from app.auth import (
    COOKIE,
    actor_of,
    cookie_script,
    cookie_text,
    free_actor,
    login_methods,
    oidc_name,
    oidc_providers,
    provider_label,
    token_max_age,
)
from app.logic.source import filter_sweeps, sweeps_frame
from storage.accounts import Accounts, cookie_secret
from storage.registry import Registry
from storage.settings import load_settings
from tests.storage.conftest import pg_registry  # noqa: F401 - the PostgreSQL fixture, by name

MAIN = str(Path(__file__).resolve().parents[2] / "app" / "main.py")


@pytest.fixture(params=["sqlite", "postgresql"])
def accounts(request: pytest.FixtureRequest, tmp_path: Path) -> Accounts:
    """Accounts on each registry backend: a SQLite file, and a fresh schema of the local PostgreSQL."""
    settings = load_settings(data_dir=tmp_path / "data", auth="local")
    settings.ensure_dirs()
    registry = Registry(settings.registry_url) if request.param == "sqlite" else request.getfixturevalue("pg_registry")
    return Accounts(registry, cookie_secret(settings))


def test_cookie_keeps_a_real_session_token_until_it_expires(accounts: Accounts) -> None:
    accounts.add_user("bob", "a long password")
    token = accounts.start_session("bob", hours=2.0)
    age = token_max_age(token, now=time.time())
    assert 2 * 3600 - 5 <= age <= 2 * 3600
    assert cookie_text(token, age) == f"{COOKIE}={token}; Path=/; SameSite=Strict; Max-Age={age}"
    assert cookie_script(token, age) == f'<script>document.cookie = "{cookie_text(token, age)}";</script>'
    assert token_max_age(token, now=time.time() + 3 * 3600) == 0  # expired: the cookie goes at once
    assert accounts.check_session(token).name == "bob"


def test_cookie_clears_and_refuses_anything_but_a_token() -> None:
    assert cookie_text("", 0) == f"{COOKIE}=; Path=/; SameSite=Strict; Max-Age=0"
    for bad in ('x"; alert(1); "', "a b", "id;Path=/evil", "x\n"):
        with pytest.raises(ValueError, match="session token"):
            cookie_text(bad, 60)
    assert token_max_age("garbage") == 0


def test_login_methods_per_mode_and_secrets() -> None:
    assert oidc_providers(None) == ()
    assert oidc_providers({"redirect_uri": "http://x/oauth2callback", "cookie_secret": "s"}) == ()
    assert oidc_providers({"client_id": "c", "client_kwargs": {"prompt": "login"}}) == ("default",)
    named = {"redirect_uri": "u", "google": {"client_id": "g"}, "microsoft": {"client_id": "m"}}
    assert oidc_providers(named) == ("google", "microsoft")
    assert provider_label("google") == "Log in with Google"

    assert not login_methods("none", ("google",)).required
    local = login_methods("local", ())
    assert local.password and local.providers == () and local.required
    assert login_methods("local", ("google",)).providers == ("google",)
    oidc = login_methods("oidc", ("default",))
    assert not oidc.password and oidc.providers == ("default",)
    assert not login_methods("oidc", ()).required  # the gate then says the [auth] section is missing
    with pytest.raises(ValueError, match="auth"):
        login_methods("ldap", ())


def test_a_laptop_is_free_and_a_dashboard_on_the_network_asks(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data", auth="auto", user="carol")
    assert not login_methods(settings.auth_mode("127.0.0.1"), ()).required
    assert login_methods(settings.auth_mode("0.0.0.0"), ()).password
    actor = free_actor(settings)
    assert (actor.name, actor.enforced) == ("carol", False)


def test_who_is_admin_comes_from_the_users_table(accounts: Accounts) -> None:
    accounts.add_user("alice", "a long password", admin=True)
    accounts.add_user("bob", "a long password")
    assert actor_of("alice", accounts.get_user("alice")).is_admin
    bob = actor_of("bob", accounts.get_user("bob"))
    assert (bob.name, bob.is_admin, bob.enforced) == ("bob", False, True)
    outsider = actor_of("eve@example.org", accounts.get_user("eve@example.org"))  # an OIDC login without a row
    assert (outsider.is_admin, outsider.enforced) == (False, True)
    assert oidc_name({"email": "eve@example.org", "name": "Eve"}) == "eve@example.org"
    assert oidc_name({"email": "", "name": "Eve"}) == "Eve"
    assert oidc_name({"sub": "123"}) is None


def _sweep(sweep_id: str, name: str, owner: str, created: str, *, tags=(), arch="mlp", dataset="teacher", counts=None):
    return {
        "id": sweep_id,
        "name": name,
        "owner": owner,
        "created": pd.Timestamp(created).timestamp(),
        "spec": {"model": {"arch": arch}, "data": {"dataset": dataset}},
        "counts": counts or {"done": 2},
        "status": "done" if not counts else "running",
        "tags": list(tags),
        "archived": None,
        "started": None,
        "finished": None,
        "duration_s": None,
    }


def test_sweep_filters_each_narrow_the_table() -> None:
    frame = sweeps_frame(
        [
            _sweep("aa11", "width scan", "alice", "2026-11-02 10:00", tags=["baseline", "mnist"]),
            _sweep("bb22", "Depth scan", "bob", "2026-11-05 09:00", tags=["deep"], arch="cnn", dataset="mnist"),
            _sweep("cc33", "gamma scan", "bob", "2026-11-09 23:30", counts={"running": 1}),
        ]
    )

    def ids(**filters) -> list[str]:
        return filter_sweeps(frame, **filters)["sweep_id"].tolist()

    assert ids() == ["aa11", "bb22", "cc33"]
    assert ids(text="SCAN") == ["aa11", "bb22", "cc33"]
    assert ids(text="depth") == ["bb22"]
    assert ids(text="cc3") == ["cc33"]  # an id prefix
    assert ids(tags=["mnist", "deep"]) == ["aa11", "bb22"]
    assert ids(owners=["bob"]) == ["bb22", "cc33"]
    assert ids(statuses=["running"]) == ["cc33"]
    assert ids(archs=["cnn"]) == ["bb22"]
    assert ids(datasets=["teacher"]) == ["aa11", "cc33"]
    assert ids(since=pd.Timestamp("2026-11-05").date(), until=pd.Timestamp("2026-11-09").date()) == ["bb22", "cc33"]
    assert ids(owners=["bob"], tags=["deep"], text="scan") == ["bb22"]
    assert filter_sweeps(frame.iloc[:0], owners=["bob"]).empty


def _main(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, auth: str, secrets: dict | None = None) -> AppTest:
    # a data folder per mode: the dashboard's resources (settings included) are cached per folder
    monkeypatch.setenv("GAMMA_LAB_DATA", str(tmp_path / f"data-{auth}-{len(secrets or {})}"))
    monkeypatch.setenv("GAMMA_LAB_AUTH", auth)
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.secrets.update(secrets or {})
    at.run()
    assert not at.exception, at.exception
    return at


def test_gate_shows_the_lab_only_after_a_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    free = _main(tmp_path, monkeypatch, "none")
    assert [t.value for t in free.title] == ["Launch a sweep"]
    assert not [b for b in free.button if b.label == "Log in"]

    auth = {"redirect_uri": "http://127.0.0.1:8501/oauth2callback", "cookie_secret": "x" * 32,
            "google": {"client_id": "c", "client_secret": "s", "server_metadata_url": "https://example.org/m"}}
    both = _main(tmp_path, monkeypatch, "local", {"auth": auth})
    assert [t.value for t in both.title] == ["gamma-lab"]
    labels = [b.label for b in both.button]
    assert "Log in" in labels and "Log in with Google" in labels
    assert [t.label for t in both.text_input] == ["User name", "Password"]

    oidc_only = _main(tmp_path, monkeypatch, "oidc", {"auth": auth})
    assert [b.label for b in oidc_only.button] == ["Log in with Google"] and not oidc_only.text_input
    assert "needs an [auth] section" in _main(tmp_path, monkeypatch, "oidc").error[0].value
