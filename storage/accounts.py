"""Local accounts for small labs: salted password hashes, rate-limited logins, signed sessions.

Everything lives in the registry (tables users, sessions, login_attempts; schema v5), so every
dashboard and CLI of a lab sees the same accounts on SQLite or PostgreSQL. Passwords are stored only
as scrypt hashes in a self-describing string ("scrypt$N$r$p$<salt>$<hash>", so the cost can be raised
later without breaking stored ones). A session cookie is "<id>.<expires>.<HMAC-SHA256>": the signature
stops a forged or edited cookie before any lookup, the row lets logout and user removal end it early.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import math
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from storage import audit
from storage.registry import Registry, login_attempts, sessions, users
from storage.settings import USER_NAME_RE, USER_NAME_RULE, Settings

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
PASSWORD_MIN, PASSWORD_MAX = 8, 1024  # the upper bound keeps one hash cheap to compute
MAX_FAILURES = 5  # failed logins for a name, or from a client, within FAILURE_WINDOW_S ...
FAILURE_WINDOW_S = 15 * 60.0  # ... refuse every attempt until the oldest of them is this old
WRONG = "wrong user name or password"  # the same for an unknown name: names are not revealed
SECRET_FILE = "secret.key"
COLUMN_MAX = 200  # login_attempts.name / client widths


class AccountError(ValueError):
    """Bad account input: `field` (name, password) and `message` say what is allowed."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


class LoginRefused(Exception):
    """A login that did not succeed. `retry_after_s`: when rate limited, the seconds to wait."""

    def __init__(self, message: str, retry_after_s: float | None = None):
        self.message, self.retry_after_s = message, retry_after_s
        super().__init__(message)


@dataclass(frozen=True)
class User:
    """An account. `external`: no password; it logs in only through the identity provider."""

    name: str
    is_admin: bool
    external: bool
    created: float


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=32)


def hash_password(password: str) -> str:
    """A new random 16-byte salt each time, so equal passwords never share a hash."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """True when `password` hashes to `stored` with its own salt and cost; a malformed `stored` is
    False. The comparison takes the same time wherever the bytes differ."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        computed = _scrypt(password, base64.b64decode(salt, validate=True), int(n), int(r), int(p))
        return hmac.compare_digest(computed, base64.b64decode(digest, validate=True))
    except (ValueError, TypeError, MemoryError):
        return False


@functools.cache
def _dummy_hash() -> str:
    """Checked against for unknown names, so they take as long as known ones (the refusal reveals
    nothing)."""
    return hash_password(secrets.token_hex(16))


def check_name(name: str) -> str:
    """The name, when it is an allowed account name (local names and e-mail addresses alike)."""
    if not isinstance(name, str) or not USER_NAME_RE.fullmatch(name):
        raise AccountError("name", f"must be {USER_NAME_RULE} (got {name!r})")
    return name


def check_password(password: str) -> str:
    if not isinstance(password, str) or not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        got = len(password) if isinstance(password, str) else type(password).__name__
        raise AccountError("password", f"must be {PASSWORD_MIN} to {PASSWORD_MAX} characters (got {got})")
    return password


def cookie_secret(settings: Settings) -> bytes:
    """The key signing session cookies: settings.cookie_secret, else <data_dir>/secret.key (32 random
    bytes, created 0600 on first use; linked into place so concurrent first uses agree on one key)."""
    if settings.cookie_secret:
        return settings.cookie_secret.encode("utf-8")
    path = Path(settings.data_dir) / SECRET_FILE
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret-")  # mkstemp makes it 0600
            try:
                os.write(fd, secrets.token_bytes(32))
                os.close(fd)
                os.link(tmp, path)  # fails when another process made it first: theirs is kept
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
        except OSError as exc:
            raise AccountError(
                "cookie_secret", f"cannot create {path} ({exc.strerror or exc}); set GAMMA_LAB_COOKIE_SECRET"
            ) from None
    secret = path.read_bytes()
    if len(secret) < 16:
        raise AccountError("cookie_secret", f"{path} holds {len(secret)} bytes, fewer than 16: delete it for a new one")
    return secret


def _user(row: Any) -> User:
    return User(name=row.name, is_admin=bool(row.is_admin), external=row.password_hash is None, created=row.created)


class Accounts:
    """Accounts, logins and sessions on `registry`'s engine. `secret` signs session cookies (needed
    only by start_session/check_session); `clock` gives the time (tests move it)."""

    def __init__(self, registry: Registry, secret: bytes = b"", *, clock: Callable[[], float] = time.time):
        self.registry, self.secret, self.clock = registry, secret, clock

    # -- users

    def add_user(self, name: str, password: str | None, *, admin: bool = False) -> User:
        """A new account; `password` None makes an identity-provider user (no local login)."""
        check_name(name)
        hashed = None if password is None else hash_password(check_password(password))
        now = self.clock()
        try:
            with self.registry.engine.begin() as conn:
                conn.execute(users.insert().values(name=name, password_hash=hashed, is_admin=bool(admin), created=now))
        except sa.exc.IntegrityError:
            raise AccountError("name", f"user {name!r} exists; remove it first or choose another name") from None
        return User(name=name, is_admin=bool(admin), external=password is None, created=now)

    def set_password(self, name: str, password: str) -> None:
        """Replace the password (an identity-provider user gets a local one too)."""
        hashed = hash_password(check_password(password))
        with self.registry.engine.begin() as conn:
            if conn.execute(users.update().where(users.c.name == name).values(password_hash=hashed)).rowcount == 0:
                raise AccountError("name", f"no user {name!r} (gamma-lab user list shows them)")

    def remove_user(self, name: str) -> bool:
        """Delete the account and end its sessions at once. False when there was none."""
        with self.registry.engine.begin() as conn:
            gone = conn.execute(users.delete().where(users.c.name == name)).rowcount > 0
            conn.execute(
                sessions.update()
                .where(sessions.c.user == name, sessions.c.ended.is_(None))
                .values(ended=self.clock())
            )
        return gone

    def list_users(self) -> list[User]:
        with self.registry.engine.connect() as conn:
            return [_user(row) for row in conn.execute(sa.select(users).order_by(users.c.name))]

    def get_user(self, name: str) -> User | None:
        with self.registry.engine.connect() as conn:
            row = conn.execute(sa.select(users).where(users.c.name == name)).first()
        return None if row is None else _user(row)

    # -- logins

    def _retry_after(self, conn: Connection, column: sa.Column[Any], value: str, now: float) -> float | None:
        """None when `value` (a name or a client) has fewer than MAX_FAILURES failures in the window;
        else the seconds until it will, counting the refused attempt being made now (it is a failure
        too), so a login exactly that much later is let through."""
        failed = sa.select(login_attempts.c.at).where(
            column == value, login_attempts.c.ok.is_(False), login_attempts.c.at > now - FAILURE_WINDOW_S
        )
        times = sorted(conn.execute(failed).scalars(), reverse=True)
        if len(times) < MAX_FAILURES:
            return None
        return times[MAX_FAILURES - 2] + FAILURE_WINDOW_S - now

    def login(self, name: str, password: str, *, client: str = "") -> User:
        """The user, when `password` is theirs and neither the name nor the client is rate limited;
        else LoginRefused. Refused attempts count as failures, so a guesser stays locked out."""
        name, now = str(name)[:COLUMN_MAX], self.clock()
        client = "".join(ch for ch in str(client) if ch.isprintable())[:COLUMN_MAX]  # header text, not trusted
        with self.registry.engine.begin() as conn:
            waits = [self._retry_after(conn, login_attempts.c.name, name, now)]
            if client:
                waits.append(self._retry_after(conn, login_attempts.c.client, client, now))
            row = conn.execute(sa.select(users).where(users.c.name == name)).first()
        wait = max((w for w in waits if w is not None), default=None)
        stored = row.password_hash if row is not None and row.password_hash is not None else None
        ok = verify_password(password, stored or _dummy_hash()) and stored is not None and wait is None
        with self.registry.engine.begin() as conn:
            conn.execute(login_attempts.insert().values(name=name, client=client, at=now, ok=ok))
            conn.execute(login_attempts.delete().where(login_attempts.c.at < now - 24 * 3600))
            detail = f"client {client}" if client else ""
            if wait is not None:
                detail = f"{detail}; rate limited".lstrip("; ")
            actor = name if USER_NAME_RE.fullmatch(name) else "(not a user name)"  # typed text stays out
            audit.insert(conn, actor, "login" if ok else "login-failed", actor, detail, now=now)
        if wait is not None:
            raise LoginRefused(f"too many failed logins: try again in {max(1, math.ceil(wait))} s", wait)
        if not ok or row is None:
            raise LoginRefused(WRONG)
        return _user(row)

    # -- sessions

    def _sign(self, session_id: str, expires: int) -> str:
        if not self.secret:
            raise AccountError("cookie_secret", "no key to sign sessions with (storage.accounts.cookie_secret)")
        return hmac.new(self.secret, f"{session_id}.{expires}".encode(), hashlib.sha256).hexdigest()

    def start_session(self, name: str, *, hours: float) -> str:
        """A new session for `name`, ending after `hours`: the signed cookie value."""
        if isinstance(hours, bool) or not isinstance(hours, int | float) or not hours > 0:
            raise AccountError("session_hours", f"must be a number of hours > 0 (got {hours!r})")
        now = self.clock()
        session_id, expires = secrets.token_hex(32), int(now + hours * 3600)
        signature = self._sign(session_id, expires)
        with self.registry.engine.begin() as conn:
            conn.execute(sessions.insert().values(id=session_id, user=name, created=now, expires=float(expires)))
        return f"{session_id}.{expires}.{signature}"

    def _session_row(self, token: str) -> Any:
        """The session's row when `token` is well formed, correctly signed and not expired, else None."""
        parts = token.split(".") if isinstance(token, str) else []
        if len(parts) != 3 or not parts[1].isdigit() or not self.secret:
            return None
        session_id, expires, signature = parts[0], int(parts[1]), parts[2]
        if not hmac.compare_digest(self._sign(session_id, expires), signature) or expires <= self.clock():
            return None
        with self.registry.engine.connect() as conn:
            return conn.execute(sa.select(sessions).where(sessions.c.id == session_id)).first()

    def check_session(self, token: str) -> User | None:
        """The logged-in user, or None when the cookie is malformed, forged, expired, logged out,
        revoked, or its user was removed."""
        row = self._session_row(token)
        if row is None or row.ended is not None or row.expires <= self.clock():
            return None
        return self.get_user(row.user)

    def end_session(self, token: str) -> None:
        """Log out: the session's row is ended, so the cookie no longer works even before it expires;
        the audit says who logged out."""
        row = self._session_row(token)
        if row is not None and row.ended is None:
            now = self.clock()
            with self.registry.engine.begin() as conn:
                conn.execute(sessions.update().where(sessions.c.id == row.id).values(ended=now))
                audit.insert(conn, row.user, "logout", row.user, now=now)
