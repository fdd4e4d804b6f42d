"""The audit trail: who launched, cancelled, reran, renamed, archived or purged what, and when, and
every login. One row per action in the registry's `audit` table (SQLite or PostgreSQL alike), so a
lab sharing one registry shares one trail. Rows are only ever added."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from storage.registry import Registry, audit

ACTIONS = (
    "launch", "cancel", "rerun", "add-seeds", "rename", "tags", "notes", "archive", "restore", "purge",
    "login", "login-failed", "logout", "user-add", "user-remove", "user-passwd",
)  # fmt: skip
ACTOR_MAX, TARGET_MAX = 200, 64  # the columns' widths (PostgreSQL enforces them, SQLite does not)


def insert(conn: Connection, actor: str, action: str, target: str = "", detail: str = "", *, now: float) -> None:
    """Add one row inside the caller's transaction (a login writes its attempt and its row together).
    An unknown action is a bug in the caller, refused so the trail never holds a misspelled one."""
    if action not in ACTIONS:
        raise ValueError(f"audit action: must be one of {', '.join(ACTIONS)} (got {action!r})")
    conn.execute(
        audit.insert().values(
            at=now, actor=str(actor)[:ACTOR_MAX], action=action, target=str(target)[:TARGET_MAX], detail=str(detail)
        )
    )


def record(
    registry: Registry, actor: str, action: str, target: str = "", detail: str = "", *, now: float | None = None
) -> None:
    """Record that `actor` did `action` to `target` (a sweep or run id, a user name), in its own
    transaction."""
    with registry.engine.begin() as conn:
        insert(conn, actor, action, target, detail, now=time.time() if now is None else now)


def trail(
    registry: Registry, *, target: str | None = None, actor: str | None = None, limit: int = 200
) -> list[dict[str, Any]]:
    """The newest `limit` rows first, optionally only those about `target` or done by `actor`.
    Keys: at, actor, action, target, detail."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit: must be an integer >= 1 (got {limit!r})")
    query = sa.select(audit.c.at, audit.c.actor, audit.c.action, audit.c.target, audit.c.detail)
    if target is not None:
        query = query.where(audit.c.target == target)
    if actor is not None:
        query = query.where(audit.c.actor == actor)
    query = query.order_by(audit.c.at.desc(), audit.c.id.desc()).limit(limit)
    with registry.engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]
