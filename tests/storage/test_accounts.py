"""Local accounts, logins, sessions and the audit trail (storage.accounts, storage.audit), each on an
SQLite registry file and on the PostgreSQL server; the v4 -> v5 registry migration; the account
settings (storage.settings)."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from storage import audit
from storage.accounts import (
    FAILURE_WINDOW_S,
    WRONG,
    AccountError,
    Accounts,
    LoginRefused,
    cookie_secret,
    hash_password,
    verify_password,
)
from storage.registry import MIGRATIONS, SCHEMA_VERSION, Registry
from storage.settings import SettingsError, load_settings

from .conftest import PG_URL

SECRET = b"k" * 32


class Clock:
    """A clock the test moves: no sleeping, no timed assertions."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    if request.param == "postgresql":
        yield request.getfixturevalue("pg_registry")
        return
    reg = Registry(f"sqlite:///{tmp_path / 'registry.sqlite'}")
    yield reg
    reg.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def accounts(registry: Registry, clock: Clock) -> Accounts:
    return Accounts(registry, SECRET, clock=clock)


def test_a_hash_is_salted_and_verifies() -> None:
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first != second and first.startswith("scrypt$16384$8$1$")  # a new salt each time
    assert verify_password("correct horse", first) and verify_password("correct horse", second)
    assert not verify_password("correct hors", first)
    assert not verify_password("correct horse", "scrypt$16384$8$1$bad")  # malformed: no, not a crash


def test_users_are_kept_as_hashes_with_names_and_passwords_checked(accounts: Accounts, registry: Registry) -> None:
    alice = accounts.add_user("alice", "password1", admin=True)
    assert alice.is_admin and not alice.external
    assert accounts.add_user("bob@lab.org", None).external  # an identity-provider user
    with registry.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT password_hash FROM users WHERE name = 'alice'").scalar_one()
    assert "password1" not in stored and verify_password("password1", stored)
    for name, password, field in [
        ("alice", "password2", "name"),  # exists
        ("bad name", "password2", "name"),
        ("x" * 65, "password2", "name"),
        ("carol", "short", "password"),
    ]:
        with pytest.raises(AccountError) as exc:
            accounts.add_user(name, password)
        assert exc.value.field == field
    assert [u.name for u in accounts.list_users()] == ["alice", "bob@lab.org"]
    accounts.set_password("bob@lab.org", "password3")
    assert not accounts.get_user("bob@lab.org").external
    with pytest.raises(AccountError, match="no user"):
        accounts.set_password("nobody", "password3")


def test_a_wrong_password_reads_the_same_for_unknown_names(accounts: Accounts) -> None:
    accounts.add_user("alice", "password1")
    accounts.add_user("idp@lab.org", None)
    refusals = []
    for name, password in [("alice", "wrong-one"), ("mallory", "wrong-one"), ("idp@lab.org", "anything1")]:
        with pytest.raises(LoginRefused) as exc:
            accounts.login(name, password)
        refusals.append((exc.value.message, exc.value.retry_after_s))
    assert refusals == [(WRONG, None)] * 3
    assert accounts.login("alice", "password1").name == "alice"


def test_five_failures_lock_the_name_even_for_the_right_password(accounts: Accounts, clock: Clock) -> None:
    accounts.add_user("alice", "password1")
    for _ in range(5):
        with pytest.raises(LoginRefused, match=WRONG):
            accounts.login("alice", "guess-guess")
        clock.now += 10
    with pytest.raises(LoginRefused) as exc:
        accounts.login("alice", "password1")
    # this refusal counts too: the failure made 40 s ago is the fifth newest now
    assert exc.value.retry_after_s == pytest.approx(FAILURE_WINDOW_S - 40)
    assert f"try again in {int(FAILURE_WINDOW_S - 40)} s" in exc.value.message
    clock.now += exc.value.retry_after_s  # as told: the login goes through
    assert accounts.login("alice", "password1").name == "alice"


def test_five_failures_from_one_client_lock_that_client_for_every_name(accounts: Accounts) -> None:
    accounts.add_user("alice", "password1")
    for i in range(5):
        with pytest.raises(LoginRefused):
            accounts.login(f"guess{i}", "password1", client="10.0.0.9")
    with pytest.raises(LoginRefused, match="too many failed logins"):
        accounts.login("alice", "password1", client="10.0.0.9")
    assert accounts.login("alice", "password1", client="10.0.0.7").name == "alice"  # another client


def test_a_session_works_until_it_is_tampered_expired_ended_or_its_user_removed(
    accounts: Accounts, registry: Registry, clock: Clock
) -> None:
    accounts.add_user("alice", "password1")
    token = accounts.start_session("alice", hours=1)
    assert accounts.check_session(token).name == "alice"
    session_id, expires, signature = token.split(".")
    later = f"{session_id}.{int(expires) + 3600}.{signature}"  # a longer expiry without the key
    assert accounts.check_session(later) is None
    assert accounts.check_session(token[:-1] + ("0" if token[-1] != "0" else "1")) is None
    assert Accounts(registry, b"another-key" * 3, clock=clock).check_session(token) is None
    for junk in ("", "a.b", "x.1.y", "a.b.c.d"):
        assert accounts.check_session(junk) is None
    clock.now += 3601
    assert accounts.check_session(token) is None  # expired
    clock.now -= 3601
    accounts.end_session(token)
    assert accounts.check_session(token) is None  # logged out
    second = accounts.start_session("alice", hours=1)
    assert accounts.check_session(second).name == "alice"
    assert accounts.remove_user("alice") and not accounts.remove_user("alice")
    assert accounts.check_session(second) is None
    accounts.add_user("alice", "password2")  # a new account of that name does not revive the old session
    assert accounts.check_session(second) is None


def test_logins_and_logouts_are_in_the_audit_newest_first(accounts: Accounts, registry: Registry, clock: Clock) -> None:
    accounts.add_user("alice", "password1")
    with pytest.raises(LoginRefused):
        accounts.login("alice", "nope-nope", client="10.1.1.1")
    clock.now += 1
    accounts.login("alice", "password1", client="10.1.1.1")
    clock.now += 1
    accounts.end_session(accounts.start_session("alice", hours=1))
    audit.record(registry, "bob", "cancel", "3f2a" * 4, "2 runs", now=clock.now + 1)
    rows = audit.trail(registry)
    assert [(r["actor"], r["action"]) for r in rows] == [
        ("bob", "cancel"),
        ("alice", "logout"),
        ("alice", "login"),
        ("alice", "login-failed"),
    ]
    assert rows[2]["detail"] == "client 10.1.1.1" and rows[0]["target"] == "3f2a" * 4
    assert [r["action"] for r in audit.trail(registry, actor="alice", limit=2)] == ["logout", "login"]
    assert [r["actor"] for r in audit.trail(registry, target="3f2a" * 4)] == ["bob"]
    with pytest.raises(ValueError, match="audit action"):
        audit.record(registry, "bob", "explode")
    clock.now += 5
    with pytest.raises(LoginRefused, match=WRONG):
        accounts.login("<b>x</b>", "password1")  # typed text is not written into the trail as a name
    assert audit.trail(registry, limit=1)[0]["actor"] == "(not a user name)"


def _v4_registry(url: str, schema: str | None = None) -> None:
    """A registry as gamma-lab v4 left it: the released steps, one sweep and one run."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        if schema:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
            conn.exec_driver_sql(f'SET search_path TO "{schema}"')
        conn.exec_driver_sql("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for step in MIGRATIONS[:4]:
            step(conn)
        conn.exec_driver_sql("INSERT INTO schema_version VALUES (4)")
        conn.exec_driver_sql("INSERT INTO sweeps VALUES ('s1', 'old', 'carol', 1.0, '{}', 'done', 'local', 'cpu')")
        conn.exec_driver_sql(
            "INSERT INTO runs (run_id, gamma, eta, seed, config, shape_key, status, attempt, created, "
            "cancel_requested, depth, width) VALUES ('r1', 0.1, 1.0, 0, '{}', 'k', 'done', 0, 1.0, FALSE, 3, 8)"
        )
        conn.exec_driver_sql("INSERT INTO sweep_runs VALUES ('s1', 'r1', 1.0, 0)")
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_v4_registry_migrates_keeping_its_sweeps_and_runs(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "postgresql":
        request.getfixturevalue("pg_registry")  # skips when the server is not reachable
        url, schema = PG_URL, f"gl_test_{uuid.uuid4().hex[:10]}"
    else:
        url, schema = f"sqlite:///{tmp_path / 'registry.sqlite'}", None
    _v4_registry(url, schema)
    reg = Registry(url, schema=schema)
    try:
        assert reg.version == SCHEMA_VERSION == 5
        assert [r["run_id"] for r in reg.list_runs("s1")] == ["r1"] and reg.get_sweep("s1")["owner"] == "carol"
        with reg.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT tags, notes, archived FROM sweeps").all() == [(None, None, None)]
        accounts = Accounts(reg, SECRET)
        accounts.add_user("alice", "password1")
        assert accounts.login("alice", "password1").name == "alice"
    finally:
        if schema:
            with reg.engine.begin() as conn:
                conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        reg.close()


def test_the_cookie_secret_file_is_private_and_kept(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data")
    first = cookie_secret(settings)
    path = tmp_path / "data" / "secret.key"
    assert len(first) == 32 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert cookie_secret(settings) == first  # every dashboard of the lab signs with the same key
    assert cookie_secret(load_settings(data_dir=tmp_path / "data", cookie_secret="s" * 20)) == b"s" * 20


def test_account_settings_from_env_and_toml_name_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AUTH", "USER", "SESSION_HOURS", "COOKIE_SECRET", "BROKER_URL", "REGISTRY_URL"):
        monkeypatch.delenv(f"GAMMA_LAB_{name}", raising=False)
    s = load_settings(data_dir=tmp_path)
    assert (s.auth, s.session_hours, s.cookie_secret) == ("auto", 12.0, None) and s.user
    assert s.auth_mode() == "none" and s.auth_mode("127.0.0.1:8501") == "none" and s.auth_mode("[::1]:8501") == "none"
    assert s.auth_mode("lab.example.org:8501") == "local" and s.auth_mode("10.0.0.5") == "local"
    assert load_settings(data_dir=tmp_path, broker_url="redis://h:6379/0").auth_mode() == "local"
    assert load_settings(data_dir=tmp_path, registry_url=PG_URL).auth_mode() == "local"
    assert load_settings(data_dir=tmp_path, auth="none").auth_mode("lab.example.org") == "none"  # explicit wins
    (tmp_path / "settings.toml").write_text('auth = "oidc"\nsession_hours = 2\nuser = "alice"\n')
    monkeypatch.setenv("GAMMA_LAB_USER", "bob@lab.org")
    s = load_settings(data_dir=tmp_path)
    assert (s.auth, s.session_hours, s.user) == ("oidc", 2.0, "bob@lab.org")
    monkeypatch.setenv("GAMMA_LAB_AUTH", "ldap")
    with pytest.raises(SettingsError, match="auth: must be one of auto, none, local, oidc"):
        load_settings(data_dir=tmp_path)
    monkeypatch.delenv("GAMMA_LAB_AUTH")
    for key, value, field in [
        ("session_hours", 0, "session_hours"),
        ("session_hours", "12", "session_hours"),
        ("user", "two words", "user"),
        ("cookie_secret", "short", "cookie_secret"),
    ]:
        with pytest.raises(SettingsError) as exc:
            load_settings(data_dir=tmp_path, **{key: value})
        assert exc.value.field == field
    monkeypatch.setenv("GAMMA_LAB_SESSION_HOURS", "soon")
    with pytest.raises(SettingsError, match="session_hours"):
        load_settings(data_dir=tmp_path)
