"""Settings: one frozen object, one documented reason per setting.

Precedence: explicit overrides > environment variables > `<data_dir>/settings.toml` > defaults.
Every process (dashboard, CLI, recorder, workers) calls `load_settings()` and sees the same values,
so a lab deployment changes behaviour by environment only (docker compose) and a laptop by a TOML
file beside its data.
"""

from __future__ import annotations

import dataclasses
import getpass
import ipaddress
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_DATA = "GAMMA_LAB_DATA"
ENV_REGISTRY = "GAMMA_LAB_REGISTRY_URL"
ENV_BROKER = "GAMMA_LAB_BROKER_URL"
ENV_PREFIX = "GAMMA_LAB_"
AUTH_MODES = ("auto", "none", "local", "oidc")
# Account names: local user names and identity-provider e-mail addresses alike.
USER_NAME_RE = re.compile(r"[A-Za-z0-9._@-]{1,64}")
USER_NAME_RULE = "1-64 characters: letters, digits and . _ @ -"


class SettingsError(ValueError):
    """A setting is not allowed. `field` names the setting."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class DataFolderReadOnly(SettingsError):
    """A command that writes was asked to run on a data folder this process cannot write (a read-only
    mount, a folder or file without write permission for this user). Reading still works."""


def write_problem(path: Path) -> str | None:
    """Why this process cannot write `path` (or, when it does not exist yet, create it), else None.

    os.access asks the kernel about this user: root passes permission bits but not a read-only mount,
    so nothing assumes who runs it."""
    probe = Path(path)
    while not probe.exists() and probe.parent != probe:  # a missing file or folder is made in its parent
        probe = probe.parent
    if os.access(probe, os.W_OK):
        return None
    try:
        if os.statvfs(probe).f_flag & os.ST_RDONLY:
            return f"{probe}: a read-only file system"
    except OSError:
        pass
    return f"{probe}: no write permission for this user"


def _local_user() -> str:
    """The login name of this process's user (the CLI's default actor); 'local' when the system
    has none (a container without a passwd entry)."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        return "local"
    return name if USER_NAME_RE.fullmatch(name) else "local"


def is_loopback(host: str) -> bool:
    """True for a Host header or address naming this machine only (localhost, 127.x, ::1), with or
    without a port."""
    text = host.strip().lower()
    if text.startswith("["):  # [::1]:8501
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # localhost:8501, 127.0.0.1:8501
        text = text.split(":", 1)[0]
    if text == "localhost" or text.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Settings:
    """Where things live and how the pieces talk.

    data_dir      -- the one folder that holds everything a lab keeps (registry, metrics, spool,
                     datasets); dataset paths in specs are resolved inside it and nowhere else.
    registry_url  -- SQLAlchemy URL of the sweeps/runs registry. SQLite in data_dir for one machine;
                     a PostgreSQL URL when several machines (GPU workers, a lab server) share it.
    broker_url    -- Redis URL. None means embedded mode: local worker processes and a spool
                     directory instead of Redis Streams, so a laptop needs no services.
    metrics_path  -- the DuckDB file. Only the recorder opens it read-write (DuckDB allows one
                     read-write process per file).
    spool_dir     -- embedded-mode event bus: workers drop event files here, the recorder ingests.
    heartbeat_s   -- how often workers publish a heartbeat; cheap, and bounds how fast a dead
                     worker is noticed.
    lost_after_s  -- a running run without a heartbeat for this long is marked `lost`; several
                     heartbeats long so one slow step (e.g. a sharpness eval) does not trip it.
    max_cells     -- refuse sweeps larger than this before queueing: a typo in a grid (1e3 values
                     instead of 1e1) should not flood the queue.
    workers       -- local worker processes in embedded mode (one per core or device by default).
    auth          -- who must log in to the dashboard: "none", "local" (accounts in the registry),
                     "oidc" (Streamlit's st.login only) or "auto": local when the lab is shared
                     (see auth_mode), none on one person's laptop.
    user          -- the name the CLI acts as (audit rows, the launcher of its sweeps); the login name.
    session_hours -- a dashboard login expires after this many hours.
    cookie_secret -- the key that signs session cookies; None = <data_dir>/secret.key, made on first use
                     (storage.accounts.cookie_secret). Every dashboard of a lab must share it.
    device_memory -- bytes one work unit may take on a worker's device (an integer, or text such as
                     "2GiB", "512MiB"). The planner sizes units by the engine's estimate (engine/memory.py)
                     against it, and a worker splits a unit that does not fit. None: measured where it is
                     needed, CUDA: the device's free memory × memory_fraction; CPU: the RAM ×
                     memory_fraction / workers (the local workers share it).
    memory_fraction -- the share of the measured memory a unit may take; the rest is headroom for the
                     allocator's caches, the library's workspaces and what the estimate misses.
    """

    data_dir: Path
    registry_url: str
    broker_url: str | None
    metrics_path: Path
    spool_dir: Path
    heartbeat_s: float = 10.0
    lost_after_s: float = 120.0
    max_cells: int = 10_000
    workers: int = 1
    auth: str = "auto"
    user: str = field(default_factory=_local_user)
    session_hours: float = 12.0
    cookie_secret: str | None = None
    device_memory: int | None = None
    memory_fraction: float = 0.7

    def __post_init__(self) -> None:
        for name in ("heartbeat_s", "lost_after_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise SettingsError(name, f"must be a number of seconds > 0 (got {value!r})")
            object.__setattr__(self, name, float(value))
        if self.lost_after_s < 2 * self.heartbeat_s:
            raise SettingsError(
                "lost_after_s",
                f"must be at least 2 x heartbeat_s={self.heartbeat_s} so one late heartbeat does not "
                f"mark a healthy run lost (got {self.lost_after_s})",
            )
        for name, low in (("max_cells", 1), ("workers", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SettingsError(name, f"must be an integer >= {low} (got {value!r})")
        if not isinstance(self.registry_url, str) or "://" not in self.registry_url:
            raise SettingsError(
                "registry_url", f"must be an SQLAlchemy URL like sqlite:///path or postgresql+psycopg://... "
                f"(got {self.registry_url!r})"
            )
        if self.broker_url is not None and not str(self.broker_url).startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError("broker_url", f"must be a redis:// URL or unset (got {self.broker_url!r})")
        self._check_accounts()
        self._check_memory()

    def _check_memory(self) -> None:
        """Validate device_memory (bytes or text like "2GiB") and memory_fraction."""
        if self.device_memory is not None:
            object.__setattr__(self, "device_memory", parse_bytes("device_memory", self.device_memory))
        frac = self.memory_fraction
        if isinstance(frac, bool) or not isinstance(frac, int | float) or not 0 < frac <= 1:
            raise SettingsError("memory_fraction", f"must be a number in (0, 1] (got {frac!r})")
        object.__setattr__(self, "memory_fraction", float(frac))

    def _check_accounts(self) -> None:
        """Validate auth, user, session_hours and cookie_secret."""
        if self.auth not in AUTH_MODES:
            raise SettingsError("auth", f"must be one of {', '.join(AUTH_MODES)} (got {self.auth!r})")
        if not isinstance(self.user, str) or not USER_NAME_RE.fullmatch(self.user):
            raise SettingsError("user", f"must be {USER_NAME_RULE} (got {self.user!r})")
        hours = self.session_hours
        if isinstance(hours, bool) or not isinstance(hours, int | float) or not 0 < hours < math.inf:
            raise SettingsError("session_hours", f"must be a number of hours > 0 (got {hours!r})")
        object.__setattr__(self, "session_hours", float(hours))
        if self.cookie_secret is not None and (not isinstance(self.cookie_secret, str) or len(self.cookie_secret) < 16):
            raise SettingsError(
                "cookie_secret", "must be a string of at least 16 characters, or unset to use <data_dir>/secret.key"
            )

    def auth_mode(self, host: str | None = None) -> str:
        """The effective login mode: an explicit `auth` wins; "auto" is "local" when the lab is shared
        (a broker, a server registry, or a dashboard reached under `host`, a non-loopback name) and
        "none" on one person's machine, so a laptop stays login-free."""
        if self.auth != "auto":
            return self.auth
        shared = not self.embedded or not self.registry_url.startswith("sqlite") or bool(host and not is_loopback(host))
        return "local" if shared else "none"

    @property
    def embedded(self) -> bool:
        """True when no broker is configured: spool directory + local workers."""
        return self.broker_url is None

    def resolve_data_path(self, rel: str | os.PathLike[str]) -> Path:
        """Resolve `rel` inside data_dir; refuse absolute paths, '..' and symlinks that lead outside.

        User text (a spec's data.path, a form field) reaches the filesystem only through here.
        """
        text = os.fspath(rel)
        if not isinstance(text, str) or not text.strip():
            raise SettingsError("data.path", "must be a non-empty path relative to the data folder")
        if "\x00" in text:
            raise SettingsError("data.path", "must not contain NUL characters")
        candidate = Path(text)
        if candidate.is_absolute() or text.startswith(("/", "\\")):
            raise SettingsError(
                "data.path", f"must be relative to the data folder {self.data_dir} (got absolute path {text!r})"
            )
        if ".." in text.replace("\\", "/").split("/"):
            raise SettingsError("data.path", f"must not contain '..'; stay inside the data folder (got {text!r})")
        root = self.data_dir.resolve()
        # resolve() follows symlinks, so a link inside data_dir pointing elsewhere is caught here.
        resolved = (root / candidate).resolve()
        if resolved != root and root not in resolved.parents:
            raise SettingsError(
                "data.path", f"{text!r} resolves to {resolved}, outside the data folder {root} (symlink?)"
            )
        return resolved

    def read_only_reason(self) -> str | None:
        """Why this process cannot write the data folder, its spool, the metric file or an SQLite
        registry file (a read-only mount, missing write permission), else None. Cheap (a few stat and
        access calls): the dashboard asks on every page."""
        paths = [self.data_dir, self.spool_dir, self.metrics_path]
        if self.registry_url.startswith("sqlite:///") and self.registry_url != "sqlite:///:memory:":
            paths.append(Path(self.registry_url.removeprefix("sqlite:///").split("?", 1)[0]))
        for path in paths:
            if (problem := write_problem(path)) is not None:
                return problem.removeprefix(f"{self.data_dir}: ")  # the folder itself goes without saying
        return None

    def require_writable(self, what: str) -> None:
        """Raise DataFolderReadOnly (one line naming the folder and why) when `what` (a command, an
        action) cannot write here."""
        reason = self.read_only_reason()
        if reason is not None:
            raise DataFolderReadOnly(
                "data folder",
                f"{self.data_dir} is read-only ({reason}): {what} needs to write there; status, export "
                "and the dashboard's pages still read it. Remount it read-write or set GAMMA_LAB_DATA to a "
                "writable folder",
            )

    def ensure_dirs(self) -> None:
        """Create the data and spool folders (idempotent)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)


_FIELDS = {f.name for f in dataclasses.fields(Settings)}
_BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip


def parse_bytes(name: str, value: Any) -> int:
    """A size in bytes from an integer or text such as "2GiB", "512 MiB", "1.5GB" (at least 1 MiB:
    a smaller budget is a typo for a bigger one)."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*", value)
        if m is None or m.group(2).lower() not in _BYTE_UNITS:
            raise SettingsError(name, f"must be a number of bytes or a size like 2GiB, 512MiB (got {value!r})")
        value = int(float(m.group(1)) * _BYTE_UNITS[m.group(2).lower()])
    if isinstance(value, bool) or not isinstance(value, int) or value < 2**20:
        raise SettingsError(name, f"must be at least 1MiB, as bytes or a size like 2GiB (got {value!r})")
    return value

_NUMERIC = {"heartbeat_s": float, "lost_after_s": float, "max_cells": int, "workers": int, "session_hours": float,
            "memory_fraction": float}


def _env_value(name: str, raw: str) -> Any:
    if name in _NUMERIC:
        try:
            return _NUMERIC[name](raw)
        except ValueError:
            raise SettingsError(name, f"environment {ENV_PREFIX}{name.upper()}={raw!r} is not a number") from None
    if name in ("broker_url", "cookie_secret", "device_memory") and raw.strip() == "":
        return None
    return raw


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from overrides > environment > <data_dir>/settings.toml > defaults.

    Environment names are GAMMA_LAB_<FIELD> (GAMMA_LAB_DATA for data_dir, GAMMA_LAB_REGISTRY_URL,
    GAMMA_LAB_BROKER_URL, GAMMA_LAB_HEARTBEAT_S, ...). An empty GAMMA_LAB_BROKER_URL means embedded.
    """
    unknown = sorted(set(overrides) - _FIELDS)
    if unknown:
        raise SettingsError(unknown[0], f"unknown setting; allowed are {', '.join(sorted(_FIELDS))}")
    data_dir = Path(overrides.get("data_dir") or os.environ.get(ENV_DATA) or "./data").expanduser()
    values: dict[str, Any] = {}
    toml_path = data_dir / "settings.toml"
    if toml_path.is_file():
        try:
            file_values = tomllib.loads(toml_path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError("settings.toml", f"{toml_path} is not valid TOML: {exc}") from None
        bad = sorted(set(file_values) - (_FIELDS - {"data_dir"}))
        if bad:
            raise SettingsError(bad[0], f"unknown setting in {toml_path}; allowed are {', '.join(sorted(_FIELDS))}")
        values.update(file_values)
    env_names = {"registry_url": ENV_REGISTRY, "broker_url": ENV_BROKER}
    for name in _FIELDS - {"data_dir"}:
        env = env_names.get(name, ENV_PREFIX + name.upper())
        if env in os.environ:
            values[name] = _env_value(name, os.environ[env])
    values.update({k: v for k, v in overrides.items() if k != "data_dir"})
    data_dir = data_dir.resolve()
    values.setdefault("registry_url", f"sqlite:///{data_dir / 'registry.sqlite'}")
    values.setdefault("broker_url", None)
    for name, default in (("metrics_path", data_dir / "metrics.duckdb"), ("spool_dir", data_dir / "spool")):
        value = Path(values.get(name, default)).expanduser()
        values[name] = value if value.is_absolute() else data_dir / value
    values.setdefault("workers", max(1, (os.cpu_count() or 1)))
    return Settings(data_dir=data_dir, **values)
