"""The registry's schema: its tables as they are now, and the ordered migrations that bring a
database of any earlier version to them. storage.registry re-exports every name here.

Never edit a released migration; append a new one and bump SCHEMA_VERSION (the table definitions
above it describe the result, the migrations the way there: both change together).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

SCHEMA_VERSION = 5

# ----------------------------------------------------------------------------- schema (current)

metadata = sa.MetaData()

schema_version = sa.Table("schema_version", metadata, sa.Column("version", sa.Integer, nullable=False))

sweeps = sa.Table(
    "sweeps",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("spec", sa.Text, nullable=False),  # JSON
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("executor", sa.String(20), nullable=False),
    # v3: the device the sweep was launched on ('cpu', 'cuda', 'cuda:N'): reruns and added seeds go
    # back to the same Celery queue (gpu/cpu) unless told otherwise
    sa.Column("device", sa.String(20), nullable=False, server_default="cpu"),
    # v5: what people write about a sweep, and when it was archived (NULL: shown in lists)
    sa.Column("tags", sa.Text),  # JSON list of strings
    sa.Column("notes", sa.Text),
    sa.Column("archived", sa.Float),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("gamma", sa.Float, nullable=False),
    sa.Column("eta", sa.Float, nullable=False),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("config", sa.Text, nullable=False),  # JSON of RunConfig.to_dict()
    sa.Column("shape_key", sa.String(64), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("worker", sa.String(200)),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("started", sa.Float),
    sa.Column("ended", sa.Float),
    sa.Column("heartbeat", sa.Float),
    sa.Column("error", sa.Text),
    sa.Column("diverged_step", sa.BigInteger),
    sa.Column("steps_done", sa.BigInteger),
    sa.Column("summary", sa.Text),  # JSON dict[str, float]
    sa.Column("cancel_requested", sa.Boolean, nullable=False),
    # v2: depth L and width N as columns, so the overlays' x transforms need no JSON parsing
    sa.Column("depth", sa.Integer),
    sa.Column("width", sa.Integer),
    # v4: the newest attempt that finished done or diverged (NULL: none yet), kept when a rerun resets
    # the current attempt above, so a cancelled, failed or lost rerun never hides a finished result
    sa.Column("result_attempt", sa.Integer),
    sa.Column("result_status", sa.String(20)),
    sa.Column("result_steps_done", sa.BigInteger),
    sa.Column("result_diverged_step", sa.BigInteger),
    sa.Column("result_summary", sa.Text),  # JSON dict[str, float]
    sa.Column("result_ended", sa.Float),
)

sweep_runs = sa.Table(
    "sweep_runs",
    metadata,
    sa.Column("sweep_id", sa.String(64), sa.ForeignKey("sweeps.id"), primary_key=True),
    sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.run_id"), primary_key=True),
    sa.Column("added", sa.Float, nullable=False),
    # v4: the attempt of the run this sweep launched or found when it linked the run; a rerun queued
    # for this sweep moves it on. A sweep whose link is the run's current attempt reads that attempt's
    # status (a cancelled rerun reads cancelled for the sweep that launched it); other sweeps read the
    # run's effective status (VIEW_COLUMNS): the earlier finished result they showed stays theirs.
    sa.Column("attempt", sa.Integer),
)
sa.Index("ix_sweep_runs_run", sweep_runs.c.run_id)
sa.Index("ix_runs_status", runs.c.status)

# v5: local accounts (password_hash NULL: an identity-provider user, who logs in only through OIDC),
# dashboard login sessions, login attempts (for rate limiting) and the audit trail of who did what
users = sa.Table(
    "users",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("password_hash", sa.Text),
    sa.Column("is_admin", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created", sa.Float, nullable=False),
)
sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("user", sa.String(200), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("expires", sa.Float, nullable=False),
    sa.Column("ended", sa.Float),
)
login_attempts = sa.Table(
    "login_attempts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200)),
    sa.Column("client", sa.String(200)),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("ok", sa.Boolean, nullable=False),
)
audit = sa.Table(
    "audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("target", sa.String(64), nullable=False, server_default=""),
    sa.Column("detail", sa.Text, nullable=False, server_default=""),
)
sa.Index("ix_login_attempts_at", login_attempts.c.at)
sa.Index("ix_audit_at", audit.c.at)


# ----------------------------------------------------------------------------- migrations
# Ordered steps: MIGRATIONS[v] brings a database at version v to v + 1. Version 0 is "empty".
# Never edit a released step; append a new one and bump SCHEMA_VERSION.


def _v0_to_v1(conn: Connection) -> None:
    """The first released schema (no depth/width columns)."""
    conn.exec_driver_sql(
        "CREATE TABLE sweeps (id VARCHAR(64) PRIMARY KEY, name VARCHAR(200) NOT NULL, "
        "owner VARCHAR(200) NOT NULL, created FLOAT NOT NULL, spec TEXT NOT NULL, "
        "status VARCHAR(20) NOT NULL, executor VARCHAR(20) NOT NULL)"
    )
    conn.exec_driver_sql(
        "CREATE TABLE runs (run_id VARCHAR(64) PRIMARY KEY, gamma FLOAT NOT NULL, eta FLOAT NOT NULL, "
        "seed INTEGER NOT NULL, config TEXT NOT NULL, shape_key VARCHAR(64) NOT NULL, "
        "status VARCHAR(20) NOT NULL, attempt INTEGER NOT NULL, worker VARCHAR(200), created FLOAT NOT NULL, "
        "started FLOAT, ended FLOAT, heartbeat FLOAT, error TEXT, diverged_step BIGINT, steps_done BIGINT, "
        "summary TEXT, cancel_requested BOOLEAN NOT NULL)"
    )
    conn.exec_driver_sql(
        "CREATE TABLE sweep_runs (sweep_id VARCHAR(64) NOT NULL REFERENCES sweeps (id), "
        "run_id VARCHAR(64) NOT NULL REFERENCES runs (run_id), added FLOAT NOT NULL, "
        "PRIMARY KEY (sweep_id, run_id))"
    )
    conn.exec_driver_sql("CREATE INDEX ix_sweep_runs_run ON sweep_runs (run_id)")
    conn.exec_driver_sql("CREATE INDEX ix_runs_status ON runs (status)")


def _v1_to_v2(conn: Connection) -> None:
    """Add depth (L) and width (N) columns, backfilled from each run's config JSON."""
    conn.exec_driver_sql("ALTER TABLE runs ADD COLUMN depth INTEGER")
    conn.exec_driver_sql("ALTER TABLE runs ADD COLUMN width INTEGER")
    rows = conn.execute(sa.select(runs.c.run_id, runs.c.config)).all()
    for run_id, config in rows:
        depth, width = depth_width(json.loads(config))
        conn.execute(runs.update().where(runs.c.run_id == run_id).values(depth=depth, width=width))


def _v2_to_v3(conn: Connection) -> None:
    """Add the sweep's launch device. Sweeps launched before it was stored ran on the default, 'cpu'."""
    conn.exec_driver_sql("ALTER TABLE sweeps ADD COLUMN device VARCHAR(20) NOT NULL DEFAULT 'cpu'")


def _v3_to_v4(conn: Connection) -> None:
    """Keep each run's newest finished (done/diverged) attempt beside its current one; runs that are
    done or diverged now are their own result."""
    for ddl in (
        "result_attempt INTEGER",
        "result_status VARCHAR(20)",
        "result_steps_done BIGINT",
        "result_diverged_step BIGINT",
        "result_summary TEXT",
        "result_ended FLOAT",
    ):
        conn.exec_driver_sql(f"ALTER TABLE runs ADD COLUMN {ddl}")
    conn.exec_driver_sql(
        "UPDATE runs SET result_attempt = attempt, result_status = status, result_steps_done = steps_done, "
        "result_diverged_step = diverged_step, result_summary = summary, result_ended = ended "
        "WHERE status IN ('done', 'diverged')"
    )
    conn.exec_driver_sql("ALTER TABLE sweep_runs ADD COLUMN attempt INTEGER")
    conn.exec_driver_sql(
        "UPDATE sweep_runs SET attempt = (SELECT r.attempt FROM runs r WHERE r.run_id = sweep_runs.run_id)"
    )


def _v4_to_v5(conn: Connection) -> None:
    """Accounts, sessions, login attempts and the audit trail; sweeps gain tags, notes and archived.
    Existing sweeps keep their rows: no tags, no notes, shown (not archived)."""
    serial = "SERIAL PRIMARY KEY" if conn.dialect.name == "postgresql" else "INTEGER PRIMARY KEY AUTOINCREMENT"
    conn.exec_driver_sql(
        "CREATE TABLE users (name VARCHAR(200) PRIMARY KEY, password_hash TEXT, "
        "is_admin BOOLEAN NOT NULL DEFAULT FALSE, created FLOAT NOT NULL)"
    )
    conn.exec_driver_sql(
        'CREATE TABLE sessions (id VARCHAR(64) PRIMARY KEY, "user" VARCHAR(200) NOT NULL, '
        "created FLOAT NOT NULL, expires FLOAT NOT NULL, ended FLOAT)"
    )
    conn.exec_driver_sql(
        f"CREATE TABLE login_attempts (id {serial}, name VARCHAR(200), client VARCHAR(200), "
        "at FLOAT NOT NULL, ok BOOLEAN NOT NULL)"
    )
    conn.exec_driver_sql(
        f"CREATE TABLE audit (id {serial}, at FLOAT NOT NULL, actor VARCHAR(200) NOT NULL, "
        "action VARCHAR(40) NOT NULL, target VARCHAR(64) NOT NULL DEFAULT '', detail TEXT NOT NULL DEFAULT '')"
    )
    conn.exec_driver_sql("CREATE INDEX ix_login_attempts_at ON login_attempts (at)")
    conn.exec_driver_sql("CREATE INDEX ix_audit_at ON audit (at)")
    for ddl in ("tags TEXT", "notes TEXT", "archived FLOAT"):
        conn.exec_driver_sql(f"ALTER TABLE sweeps ADD COLUMN {ddl}")


MIGRATIONS: list[Callable[[Connection], None]] = [_v0_to_v1, _v1_to_v2, _v2_to_v3, _v3_to_v4, _v4_to_v5]
assert len(MIGRATIONS) == SCHEMA_VERSION


def depth_width(config: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """A run config's model depth L and width N (None where the config has none): the runs table's
    depth and width columns."""
    model = config.get("model", {}) if isinstance(config, Mapping) else {}
    depth, width = model.get("depth"), model.get("width")
    return (depth if isinstance(depth, int) else None, width if isinstance(width, int) else None)
