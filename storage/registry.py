"""Run registry: sweeps and runs (SQLAlchemy 2.0 Core), SQLite by default, PostgreSQL by URL.

Row-level, transactional data lives here (status, owner, config JSON); metric time series live in
DuckDB (storage.metric_store). Several processes write (dashboard, recorder, CLI, workers checking
cancel flags), so SQLite runs in WAL mode with a busy timeout and every transaction starts with
BEGIN IMMEDIATE: a deferred transaction that reads and then writes can fail with SQLITE_BUSY at
once in WAL mode (the busy handler is not used for a stale read snapshot), IMMEDIATE takes the
write lock up front and waits politely instead.

Times are float seconds since the epoch (portable across SQLite/PostgreSQL, trivially comparable).
A run's identity is its config's content hash; a run can belong to several sweeps through the
`sweep_runs` link table, so re-launching a cell finds and reuses its stored result.

Each process builds its own Registry (engines must not cross a fork).
The tables and their migrations are in storage.schema.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from storage.events import FINISH_STATUSES, FinishedEvent, HeartbeatEvent, StartedEvent  # noqa: F401 (re-exported)
from storage.schema import (  # the tables and migrations live there; their names are re-exported here
    MIGRATIONS,
    SCHEMA_VERSION,
    audit,  # noqa: F401
    depth_width,
    login_attempts,  # noqa: F401
    metadata,  # noqa: F401
    runs,
    schema_version,
    sessions,  # noqa: F401
    sweep_runs,
    sweeps,
    users,  # noqa: F401
)

RUN_STATUSES = ("queued", "running", "done", "diverged", "failed", "cancelled", "lost")
# The numbers of a run's summary (engine.trainer writes them; the runs table and export show them)
SUMMARY_KEYS = ("tail_train_loss", "final_train_loss", "best_train_loss", "final_test_loss", "final_test_acc")
# An attempt that ended in one of these is a result: it stays the one shown until a newer attempt
# ends in one of these too (a cancelled, failed or lost rerun never hides it).
RESULT_STATUSES = ("done", "diverged")
ACTIVE_STATUSES = ("queued", "running")


class RegistryError(ValueError):
    """Bad input to the registry (unknown sweep, bad status...)."""


class RegistryUnreadable(RegistryError):
    """The registry database cannot be opened or read (a corrupt SQLite file, an unreachable server).
    Never answered by creating a fresh registry: that would silently lose every sweep."""


PREFIX_MIN = 4  # as git: a shorter text names a sweep or run only in full
PREFIX_SHOWN = 10  # candidates an ambiguous prefix names


class UnknownId(RegistryError):
    """No sweep (or run) has this id or starts with it. `.text`, `.kinds` ("sweep", "run")."""

    def __init__(self, text: str, kinds: Sequence[str]):
        self.text, self.kinds = text, tuple(kinds)
        hint = f" (a prefix needs at least {PREFIX_MIN} characters)" if len(text) < PREFIX_MIN else ""
        if len(self.kinds) > 1:
            super().__init__(f"{text!r} is neither a sweep nor a run, nor the start of one{hint}")
        else:
            super().__init__(f"no {self.kinds[0]} {text!r}, nor one starting with it{hint}")


class AmbiguousId(RegistryError):
    """A prefix that starts several ids. `.text`, `.candidates` [(kind, id)] (at most PREFIX_SHOWN),
    `.more` (how many others)."""

    def __init__(self, text: str, candidates: Sequence[tuple[str, str]], more: int = 0):
        self.text, self.candidates, self.more = text, list(candidates), more
        names = ", ".join(f"{kind} {cid}" for kind, cid in self.candidates) + (f" and {more} more" if more else "")
        super().__init__(f"{text!r} is ambiguous: it starts {names}; give more characters")


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class NewRun:
    """What the registry needs to know about a cell (storage does not import engine)."""

    run_id: str
    config: dict[str, Any]
    shape_key: str
    gamma: float
    eta: float
    seed: int

    @classmethod
    def from_config(cls, cfg: Any) -> NewRun:
        """From anything shaped like engine.config.RunConfig (run_id, shape_key, to_dict(), γ, η, seed)."""
        if isinstance(cfg, NewRun):
            return cfg
        return cls(cfg.run_id, cfg.to_dict(), cfg.shape_key, float(cfg.gamma), float(cfg.eta), int(cfg.seed))


@dataclass(frozen=True)
class AddResult:
    new: list[str]  # run_ids inserted as queued
    existing: list[str]  # run_ids already stored (linked to the sweep, result reused)


@dataclass
class AppliedEvents:
    """Run ids each kind of event of a batch applied to (ignored events are left out)."""

    started: list[str]
    heartbeats: list[str]
    finished: list[str]


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _clean_summary(summary: Mapping[str, Any] | None) -> dict[str, float | None]:
    """JSON has no NaN/inf: keep the key, store None (a diverged run's loss is not a number)."""
    out: dict[str, float | None] = {}
    for key, value in (summary or {}).items():
        v = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        out[str(key)] = v if v is not None and math.isfinite(v) else None
    return out


def sweep_rollup(counts: Mapping[str, int]) -> str:
    """A sweep's status from its runs' status counts.

    queued: nothing started; running: some work left; otherwise the worst terminal outcome
    (failed/lost > cancelled > done; diverged runs are results, so they count as done).
    """
    total = sum(counts.values())
    if total == 0:
        return "empty"
    active = counts.get("running", 0) + counts.get("queued", 0)
    if counts.get("queued", 0) == total:
        return "queued"
    if active:
        return "running"
    if counts.get("failed", 0) or counts.get("lost", 0):
        return "failed"
    if counts.get("cancelled", 0):
        return "cancelled"
    return "done"


# ----------------------------------------------------------------------------- the shown attempt
# A run keeps two outcomes: its current attempt (status, attempt, steps_done, ... : what workers and
# the recorder act on) and `result_*`, its newest attempt that finished done or diverged. Every view
# reads the *shown* attempt: the current one when it finished with a result or when there is no
# earlier result (a first attempt, live or cancelled, is all there is); otherwise the earlier result,
# while the newer attempt is queued or running and after it was cancelled, failed or was lost
# (`newer_status` then names the newer attempt's state; it is NULL when the current one is shown).
# The *effective* status (sweep rollups, `status`, the Runs page) is the current attempt's while it
# is queued or running or when it is shown, else the result's: a rerun's runs read running while
# they train again, and cancelling that rerun gives back exactly the status the result had.

_CURRENT_SHOWN = sa.or_(runs.c.status.in_(RESULT_STATUSES), runs.c.result_attempt.is_(None))


def _shown(current: Any, result: Any) -> Any:
    return sa.case((_CURRENT_SHOWN, current), else_=result)


VIEW_COLUMNS: dict[str, Any] = {
    "shown_attempt": _shown(runs.c.attempt, runs.c.result_attempt),
    "shown_status": _shown(runs.c.status, runs.c.result_status),
    "shown_steps_done": _shown(runs.c.steps_done, runs.c.result_steps_done),
    "shown_diverged_step": _shown(runs.c.diverged_step, runs.c.result_diverged_step),
    "shown_summary": _shown(runs.c.summary, runs.c.result_summary),
    "effective_status": sa.case(
        (sa.or_(_CURRENT_SHOWN, runs.c.status.in_(ACTIVE_STATUSES)), runs.c.status), else_=runs.c.result_status
    ),
    "newer_status": sa.case((_CURRENT_SHOWN, sa.null()), else_=runs.c.status),
}


# The status a sweep reads for one of its runs: the current attempt's when the sweep launched (or
# found) that attempt, else the run's effective status. Needs sweep_runs joined.
SWEEP_STATUS = sa.case((sweep_runs.c.attempt == runs.c.attempt, runs.c.status), else_=VIEW_COLUMNS["effective_status"])


def run_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """VIEW_COLUMNS computed in Python from a runs row (its current and result_* columns), summaries
    as dicts. The same rules as the SQL expressions (tests hold them equal)."""
    current_shown = row["status"] in RESULT_STATUSES or row.get("result_attempt") is None

    def pick(name: str) -> Any:
        return row[name] if current_shown else row.get(f"result_{name}")

    summary = pick("summary")
    active = row["status"] in ACTIVE_STATUSES
    return {
        "shown_attempt": pick("attempt"),
        "shown_status": pick("status"),
        "shown_steps_done": pick("steps_done"),
        "shown_diverged_step": pick("diverged_step"),
        "shown_summary": json.loads(summary) if isinstance(summary, str) and summary else {},
        # in a sweep's listing (link_attempt: storage.registry.SWEEP_STATUS) a sweep's own attempt reads as is
        "effective_status": row["status"]
        if current_shown or active or row.get("link_attempt") == row["attempt"]
        else row.get("result_status"),
        "newer_status": None if current_shown else row["status"],
    }


def newer_note(view: Mapping[str, Any], attempt: int) -> str:
    """One line for a run whose shown attempt is not its current one, e.g. 'attempt 1 cancelled;
    showing attempt 0 (done)'; '' when the current attempt is shown."""
    if not view.get("newer_status"):
        return ""
    return f"attempt {attempt} {view['newer_status']}; showing attempt {view['shown_attempt']} ({view['shown_status']})"


def newer_line(newer: Mapping[str, int]) -> str:
    """One line for a sweep's `newer` counts, e.g. '12 run(s) show their newest finished attempt;
    newer attempts: 12 cancelled'; '' when every run shows its current attempt."""
    if not newer:
        return ""
    parts = ", ".join(f"{n} {status}" for status, n in sorted(newer.items()))
    return f"{sum(newer.values())} run(s) show their newest finished attempt; newer attempts: {parts}"


# ----------------------------------------------------------------------------- the registry


class Registry:
    """Sweeps and runs. `url` is an SQLAlchemy URL; `schema` (PostgreSQL only) isolates a lab or a test."""

    def __init__(self, url: str, *, schema: str | None = None, echo: bool = False, read_only: bool | None = None):
        """`read_only`: open without writing anything (no migration, no BEGIN IMMEDIATE, writes refused
        with RegistryReadOnly); None (the default) = read-only exactly when this process cannot write an
        SQLite registry's file or folder (a read-only data folder), so readers work there unchanged."""
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.read_only = sqlite_read_only(url) if read_only is None else bool(read_only)
        self._ro_copy: Path | None = None  # a private copy read instead of the file (see _sqlite_ro_connect)
        if schema is not None and self.is_sqlite:
            raise RegistryError("schema: only PostgreSQL registries take a schema name")
        if schema is not None and not schema.replace("_", "").isalnum():
            raise RegistryError(f"schema: letters, digits and _ only (got {schema!r})")
        self.schema = schema
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        if self.is_sqlite and self.read_only:
            kwargs["creator"], self._ro_copy = _sqlite_ro_connect(url)
        elif self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        else:
            kwargs["pool_pre_ping"] = True
        engine = sa.create_engine(url, **kwargs)
        if self.is_sqlite:
            _sqlite_pragmas(engine, read_only=self.read_only)
        if self.read_only:
            _refuse_writes(engine, url, postgres=not self.is_sqlite)
        if self.is_sqlite:
            _name_damage(engine, url)
        if schema is not None:
            if not self.read_only:
                with engine.begin() as conn:
                    conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')

            # search_path (not schema_translate_map) so the raw DDL of the migrations lands there too
            @event.listens_for(engine, "connect")
            def _set_search_path(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute(f'SET search_path TO "{schema}"')
                cur.close()
                dbapi_conn.commit()

            engine.dispose()  # the connection used above predates the hook
        self.engine: Engine = engine
        try:
            self._check_version() if self.read_only else self._migrate()
            if self.is_sqlite:
                _quick_check_once(engine, url)
        except sa.exc.DatabaseError as exc:  # OperationalError included
            self.close()
            raise _unreadable(url, exc) from None
        except RegistryError:
            self.close()
            raise

    # -- lifecycle

    def close(self) -> None:
        self.engine.dispose()
        if self._ro_copy is not None:
            shutil.rmtree(self._ro_copy, ignore_errors=True)
            self._ro_copy = None

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        """Bring the database to SCHEMA_VERSION, one ordered step at a time, each in a transaction."""
        with self.engine.begin() as conn:
            if self.is_sqlite:
                pass  # BEGIN IMMEDIATE already serializes concurrent openers
            else:
                # Concurrent openers on PostgreSQL: one migrates, the others wait here.
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7715533)")
            insp = sa.inspect(conn)
            if not insp.has_table("schema_version", schema=self.schema):
                schema_version.create(conn)
                has_runs = insp.has_table("runs", schema=self.schema)
                if has_runs:
                    raise RegistryError(
                        "registry: found tables without a schema_version row; this is not a gamma-lab registry"
                    )
                conn.execute(schema_version.insert().values(version=0))
            version = conn.execute(sa.select(schema_version.c.version)).scalar_one()
            if version > SCHEMA_VERSION:
                raise RegistryError(
                    f"registry schema version {version} is newer than this gamma-lab ({SCHEMA_VERSION}); upgrade"
                )
            while version < SCHEMA_VERSION:
                MIGRATIONS[version](conn)
                version += 1
                conn.execute(schema_version.update().values(version=version))

    def _check_version(self) -> None:
        """Read-only: nothing may be written, so no migration; a schema older than this code reads is
        refused in one line saying what to do (a writable open upgrades it)."""
        with self.engine.connect() as conn:
            insp = sa.inspect(conn)
            if not insp.has_table("schema_version", schema=self.schema):
                raise RegistryUnreadable(
                    f"registry: {_where(self.url)} holds no gamma-lab registry (no schema_version table); it is "
                    "opened read-only, so nothing was created"
                )
            version = int(conn.execute(sa.select(schema_version.c.version)).scalar() or 0)
        if version > SCHEMA_VERSION:
            raise RegistryError(
                f"registry schema version {version} is newer than this gamma-lab ({SCHEMA_VERSION}); upgrade"
            )
        if version < SCHEMA_VERSION:
            raise RegistryUnreadable(
                f"registry: {_where(self.url)} has schema version {version} and this gamma-lab reads version "
                f"{SCHEMA_VERSION}; it is read-only here, so it cannot be upgraded: open it writable once to "
                "upgrade (any gamma-lab command on a writable copy of the data folder), then read it again"
            )

    @property
    def version(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(schema_version.c.version)).scalar_one())

    # -- sweeps

    def create_sweep(
        self,
        name: str,
        owner: str,
        spec: Mapping[str, Any],
        *,
        executor: str = "local",
        device: str = "cpu",
        sweep_id: str | None = None,
        now: float | None = None,
    ) -> str:
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise RegistryError(f"name: must be 1-200 characters (got {name!r})")
        if not isinstance(owner, str) or not owner.strip() or len(owner) > 200:
            raise RegistryError(f"owner: must be 1-200 characters (got {owner!r})")
        for label, text in (("name", name), ("owner", owner)):  # the last line of defence (tasks.spec checks first)
            bad = next((i for i, ch in enumerate(text) if ord(ch) < 32 or 127 <= ord(ch) < 160), None)
            if bad is not None:
                raise RegistryError(
                    f"{label}: must not contain control characters (got {text[bad]!r} at position {bad})"
                )
        if not isinstance(device, str) or not device.strip() or len(device) > 20:
            raise RegistryError(f"device: must be 1-20 characters, e.g. 'cpu' or 'cuda:0' (got {device!r})")
        sweep_id = sweep_id or uuid.uuid4().hex[:12]
        with self.engine.begin() as conn:
            conn.execute(
                sweeps.insert().values(
                    id=sweep_id,
                    name=name,
                    owner=owner,
                    created=now or time.time(),
                    spec=_json(dict(spec)),
                    status="empty",
                    executor=executor,
                    device=device,
                )
            )
        return sweep_id

    def add_runs(self, sweep_id: str, configs: Iterable[Any], *, now: float | None = None) -> AddResult:
        """Insert new runs as queued and link all of them to the sweep. Existing runs keep their
        status and stored result (a re-launched cell is found, not retrained); the link records the
        attempt the sweep found (the shown one: a finished result, or the attempt under way)."""
        items = [NewRun.from_config(c) for c in configs]
        now = now or time.time()
        new: list[str] = []
        existing: list[str] = []
        with self.engine.begin() as conn:
            if conn.execute(sa.select(sweeps.c.id).where(sweeps.c.id == sweep_id)).first() is None:
                raise RegistryError(f"sweep_id: no sweep {sweep_id!r}")
            ids = [it.run_id for it in items]
            stored: dict[str, int] = {}  # run_id -> shown attempt: what a sweep linking the run finds
            shown = VIEW_COLUMNS["shown_attempt"]
            for chunk in _chunks(ids):
                stored.update(
                    (rid, int(att))
                    for rid, att in conn.execute(sa.select(runs.c.run_id, shown).where(runs.c.run_id.in_(chunk)))
                )
            linked = set(
                conn.execute(sa.select(sweep_runs.c.run_id).where(sweep_runs.c.sweep_id == sweep_id)).scalars()
            )
            rows, links, seen = [], [], set()
            for it in items:
                if it.run_id in seen:
                    continue
                seen.add(it.run_id)
                if it.run_id in stored:
                    existing.append(it.run_id)
                else:
                    depth, width = depth_width(it.config)
                    rows.append(
                        dict(
                            run_id=it.run_id,
                            gamma=it.gamma,
                            eta=it.eta,
                            seed=it.seed,
                            config=_json(it.config),
                            shape_key=it.shape_key,
                            status="queued",
                            attempt=0,
                            created=now,
                            cancel_requested=False,
                            depth=depth,
                            width=width,
                        )
                    )
                    new.append(it.run_id)
                if it.run_id not in linked:
                    links.append(dict(sweep_id=sweep_id, run_id=it.run_id, added=now, attempt=stored.get(it.run_id, 0)))
            if rows:
                conn.execute(runs.insert(), rows)
            if links:
                conn.execute(sweep_runs.insert(), links)
            self._refresh_sweeps(conn, [sweep_id])
        return AddResult(new=new, existing=existing)

    def _tally(
        self, conn: Connection, sweep_ids: Sequence[str] | None
    ) -> dict[str, tuple[dict[str, int], dict[str, int]]]:
        """sweep_id -> (runs per status as the sweep reads it (SWEEP_STATUS), runs per newer-attempt
        status): one grouped query."""
        eff, newer = SWEEP_STATUS, VIEW_COLUMNS["newer_status"]
        q = (
            sa.select(sweep_runs.c.sweep_id, eff, newer, sa.func.count())
            .join(runs, runs.c.run_id == sweep_runs.c.run_id)
            .group_by(sweep_runs.c.sweep_id, eff, newer)
        )
        if sweep_ids is not None:
            q = q.where(sweep_runs.c.sweep_id.in_(list(sweep_ids)))
        out: dict[str, tuple[dict[str, int], dict[str, int]]] = {}
        for sid, status, newer_status, n in conn.execute(q):
            counts, newer_counts = out.setdefault(sid, ({}, {}))
            counts[status] = counts.get(status, 0) + int(n)
            if newer_status:
                newer_counts[newer_status] = newer_counts.get(newer_status, 0) + int(n)
        return out

    def _counts(self, conn: Connection, sweep_ids: Sequence[str] | None) -> dict[str, dict[str, int]]:
        """sweep_id -> runs per status as the sweep reads it (SWEEP_STATUS)."""
        return {sid: counts for sid, (counts, _newer) in self._tally(conn, sweep_ids).items()}

    def _refresh_sweeps(self, conn: Connection, sweep_ids: Sequence[str]) -> None:
        counts = self._counts(conn, sweep_ids)
        for sid in sweep_ids:
            conn.execute(sweeps.update().where(sweeps.c.id == sid).values(status=sweep_rollup(counts.get(sid, {}))))

    def _refresh_for_runs(self, conn: Connection, run_ids: Sequence[str]) -> None:
        sids: set[str] = set()
        for chunk in _chunks(run_ids):
            sids |= set(conn.execute(sa.select(sweep_runs.c.sweep_id).where(sweep_runs.c.run_id.in_(chunk))).scalars())
        if sids:
            self._refresh_sweeps(conn, sorted(sids))

    @staticmethod
    def _times(conn: Connection, sweep_ids: Sequence[str]) -> dict[str, tuple[float | None, float | None]]:
        """sweep_id -> (its first run's start, its last run's end): one grouped query. A lost run has no
        `ended`: its last heartbeat stands for it."""
        end = sa.func.coalesce(runs.c.ended, runs.c.result_ended, runs.c.heartbeat, runs.c.started)
        q = (
            sa.select(sweep_runs.c.sweep_id, sa.func.min(runs.c.started), sa.func.max(end))
            .join(runs, runs.c.run_id == sweep_runs.c.run_id)
            .where(sweep_runs.c.sweep_id.in_(list(sweep_ids)))
            .group_by(sweep_runs.c.sweep_id)
        )
        return {sid: (first, last) for sid, first, last in conn.execute(q)}

    @staticmethod
    def _sweep_dict(
        row: Any, tally: tuple[dict[str, int], dict[str, int]], times: tuple[float | None, float | None]
    ) -> dict[str, Any]:
        counts, newer = tally
        d = dict(row._mapping)
        d["spec"] = json.loads(d["spec"])
        d["tags"] = json.loads(d["tags"]) if d.get("tags") else []
        d["notes"] = d.get("notes") or ""
        d["counts"] = {s: counts.get(s, 0) for s in RUN_STATUSES}
        d["newer"] = dict(sorted(newer.items()))  # runs showing an earlier result, by their newer attempt's status
        d["n_runs"] = sum(counts.values())
        d["status"] = sweep_rollup(counts)  # always fresh, whatever the stored column says
        started, last_end = times
        final = d["n_runs"] > 0 and not any(counts.get(s, 0) for s in ACTIVE_STATUSES)
        d["started"], d["finished"] = started, (last_end if final and started is not None else None)
        d["duration_s"] = None if started is None else max(0.0, (d["finished"] or time.time()) - started)
        return d

    def _sweep_dicts(self, conn: Connection, rows: Sequence[Any]) -> list[dict[str, Any]]:
        ids = [r.id for r in rows]
        tally = self._tally(conn, ids) if ids else {}
        times = self._times(conn, ids) if ids else {}
        return [self._sweep_dict(r, tally.get(r.id, ({}, {})), times.get(r.id, (None, None))) for r in rows]

    def list_sweeps(
        self, *, owner: str | None = None, limit: int | None = None, archived: bool | None = False
    ) -> list[dict[str, Any]]:
        """Newest first, each with `counts` per effective run status, `newer` (runs that show an earlier
        finished attempt, per status of their newer attempt), `n_runs`, the rolled-up `status`, tags,
        notes, archived and started/finished/duration_s. `archived`: False hides archived sweeps (what
        lists show), True lists only them, None every sweep (what must see all work, e.g. queued runs)."""
        q = sa.select(sweeps).order_by(sweeps.c.created.desc())
        if owner is not None:
            q = q.where(sweeps.c.owner == owner)
        if archived is not None:
            q = q.where(sweeps.c.archived.is_not(None) if archived else sweeps.c.archived.is_(None))
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            return self._sweep_dicts(conn, conn.execute(q).all())

    def get_sweep(self, sweep_id: str) -> dict[str, Any] | None:
        """One sweep as list_sweeps shows it (archived or not); None when there is no such sweep."""
        with self.engine.connect() as conn:
            found = self._sweep_dicts(conn, conn.execute(sa.select(sweeps).where(sweeps.c.id == sweep_id)).all())
        return found[0] if found else None

    def update_sweep(self, sweep_id: str, **values: Any) -> None:
        """Set a sweep's name, tags (a list of strings), notes or archived (a time, or None to restore).
        The caller (tasks.api) checks the values and who may change them; RegistryError for an unknown
        sweep or column."""
        bad = sorted(set(values) - {"name", "tags", "notes", "archived"})
        if bad:
            raise RegistryError(f"{bad[0]}: not a field of a sweep that can be changed")
        if "tags" in values:
            values["tags"] = _json(list(values["tags"]))
        with self.engine.begin() as conn:
            if not conn.execute(sweeps.update().where(sweeps.c.id == sweep_id).values(**values)).rowcount:
                raise RegistryError(f"sweep_id: no sweep {sweep_id!r}")

    @staticmethod
    def _split_shared(conn: Connection, sweep_id: str) -> tuple[list[str], dict[str, list[str]]]:
        """The sweep's runs no other sweep holds, and its shared runs: run_id -> the other sweeps."""
        mine = list(conn.execute(sa.select(sweep_runs.c.run_id).where(sweep_runs.c.sweep_id == sweep_id)).scalars())
        shared: dict[str, list[str]] = {}
        for chunk in _chunks(mine):
            for rid, sid in conn.execute(
                sa.select(sweep_runs.c.run_id, sweep_runs.c.sweep_id)
                .where(sweep_runs.c.run_id.in_(chunk), sweep_runs.c.sweep_id != sweep_id)
                .order_by(sweep_runs.c.sweep_id)
            ):
                shared.setdefault(rid, []).append(sid)
        return sorted(r for r in mine if r not in shared), dict(sorted(shared.items()))

    def purge_split(self, sweep_id: str) -> tuple[list[str], dict[str, list[str]]]:
        """What a purge of the sweep would delete and keep: (run ids no other sweep holds, shared run
        id -> the other sweeps holding it)."""
        with self.engine.connect() as conn:
            return self._split_shared(conn, sweep_id)

    def purge_sweep(self, sweep_id: str) -> tuple[list[str], dict[str, list[str]]]:
        """Delete the sweep, its links to runs and the runs no other sweep holds, in ONE transaction;
        shared runs stay with their other sweeps. Refused (RegistryError, nothing changed) while any of
        its runs is queued or running. Returns purge_split's answer as it was deleted. The runs' metric
        points are the recorder's to delete (storage.purge)."""
        with self.engine.begin() as conn:
            if conn.execute(sa.select(sweeps.c.id).where(sweeps.c.id == sweep_id)).first() is None:
                raise RegistryError(f"sweep_id: no sweep {sweep_id!r}")
            active = conn.execute(
                sa.select(sa.func.count())
                .select_from(sweep_runs.join(runs, runs.c.run_id == sweep_runs.c.run_id))
                .where(sweep_runs.c.sweep_id == sweep_id, runs.c.status.in_(ACTIVE_STATUSES))
            ).scalar_one()
            if active:
                raise RegistryError(
                    f"sweep: {active} run(s) of sweep {sweep_id} are queued or running; cancel it first, then purge"
                )
            only_here, shared = self._split_shared(conn, sweep_id)
            conn.execute(sweep_runs.delete().where(sweep_runs.c.sweep_id == sweep_id))
            for chunk in _chunks(only_here):
                conn.execute(runs.delete().where(runs.c.run_id.in_(chunk)))
            conn.execute(sweeps.delete().where(sweeps.c.id == sweep_id))
        return only_here, shared

    def sweeps_of_run(self, run_id: str) -> list[str]:
        """The sweeps a run belongs to, the one it joined last first (a rerun of the run alone goes where
        that sweep's work goes)."""
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(sweep_runs.c.sweep_id)
                    .where(sweep_runs.c.run_id == run_id)
                    .order_by(sweep_runs.c.added.desc(), sweep_runs.c.sweep_id)
                ).scalars()
            )

    def sweeps_sharing(self, run_ids: Iterable[str], *, besides: str | None = None) -> dict[str, int]:
        """sweep_id -> how many of `run_ids` it holds, other than `besides` (one query, chunked for
        the database's parameter limit): whom a cancel of shared runs also affects."""
        ids = list(dict.fromkeys(run_ids))
        out: dict[str, int] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(ids):
                q = (
                    sa.select(sweep_runs.c.sweep_id, sa.func.count())
                    .where(sweep_runs.c.run_id.in_(chunk))
                    .group_by(sweep_runs.c.sweep_id)
                )
                if besides is not None:
                    q = q.where(sweep_runs.c.sweep_id != besides)
                for sweep_id, n in conn.execute(q):
                    out[sweep_id] = out.get(sweep_id, 0) + int(n)
        return out

    # -- runs (read)

    @staticmethod
    def _run_dict(row: Any) -> dict[str, Any]:
        d = dict(row._mapping)
        d.update(run_view(d))  # shown_* / effective_status / newer_status (see VIEW_COLUMNS)
        d["config"] = json.loads(d["config"])
        d["summary"] = json.loads(d["summary"]) if d["summary"] else {}
        d["result_summary"] = json.loads(d["result_summary"]) if d["result_summary"] else {}
        d["cancel_requested"] = bool(d["cancel_requested"])
        return d

    def list_runs(
        self,
        sweep_id: str,
        *,
        status: str | Sequence[str] | None = None,
        gamma: float | None = None,
        eta: float | None = None,
        seed: int | None = None,
    ) -> list[dict[str, Any]]:
        """Runs of a sweep ordered by (γ, η, seed), optionally filtered (by current status). Each with
        `link_attempt` (the attempt the sweep launched or found) and effective_status as the sweep reads
        it (SWEEP_STATUS)."""
        q = (
            sa.select(runs, sweep_runs.c.attempt.label("link_attempt"))
            .join(sweep_runs, sweep_runs.c.run_id == runs.c.run_id)
            .where(sweep_runs.c.sweep_id == sweep_id)
            .order_by(runs.c.gamma, runs.c.eta, runs.c.seed)
        )
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            bad = sorted(set(statuses) - set(RUN_STATUSES))
            if bad:
                raise RegistryError(f"status: {bad[0]!r} is not one of {', '.join(RUN_STATUSES)}")
            q = q.where(runs.c.status.in_(statuses))
        if gamma is not None:
            q = q.where(runs.c.gamma == float(gamma))
        if eta is not None:
            q = q.where(runs.c.eta == float(eta))
        if seed is not None:
            q = q.where(runs.c.seed == int(seed))
        with self.engine.connect() as conn:
            return [self._run_dict(r) for r in conn.execute(q)]

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.run_id == run_id)).first()
        return None if row is None else self._run_dict(row)

    def get_runs(self, run_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Runs in the order asked; unknown ids are left out."""
        found: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(run_ids):
                for r in conn.execute(sa.select(runs).where(runs.c.run_id.in_(chunk))):
                    found[r.run_id] = self._run_dict(r)
        return [found[i] for i in run_ids if i in found]

    def running_runs(self) -> list[dict[str, Any]]:
        """Runs whose current attempt is running: run_id, gamma, eta, seed, attempt, worker (host:pid),
        started, heartbeat, and `sweeps` (their sweep ids). tasks.workers groups them by worker."""
        q = (
            sa.select(runs.c.run_id, runs.c.gamma, runs.c.eta, runs.c.seed, runs.c.attempt, runs.c.worker,
                      runs.c.started, runs.c.heartbeat, sweep_runs.c.sweep_id)
            .join(sweep_runs, sweep_runs.c.run_id == runs.c.run_id, isouter=True)
            .where(runs.c.status == "running")
            .order_by(runs.c.gamma, runs.c.eta, runs.c.seed, sweep_runs.c.sweep_id)
        )
        out: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(q):
                run = out.setdefault(row.run_id, {**row._mapping, "sweeps": []})
                if row.sweep_id is not None:
                    run["sweeps"].append(row.sweep_id)
        for run in out.values():
            del run["sweep_id"]
        return list(out.values())

    def existing_run_ids(self, run_ids: Iterable[str]) -> set[str]:
        ids = list(set(run_ids))
        out: set[str] = set()
        with self.engine.connect() as conn:
            for chunk in _chunks(ids):
                out |= set(conn.execute(sa.select(runs.c.run_id).where(runs.c.run_id.in_(chunk))).scalars())
        return out

    # -- runs (status transitions; each returns whether it applied)

    def mark_running(self, run_id: str, attempt: int, worker: str, *, now: float | None = None) -> bool:
        """queued/lost/running -> running for the current attempt. An old attempt's event is ignored."""
        res = self.apply_events(started=[StartedEvent(run_id, attempt, worker, now or time.time())])
        return run_id in res.started

    def heartbeat(self, run_ids: Sequence[str], attempt: int, worker: str, *, now: float | None = None) -> int:
        """Refresh liveness. A run marked lost whose worker turns out alive goes back to running."""
        res = self.apply_events(heartbeats=[HeartbeatEvent(list(run_ids), attempt, worker, now or time.time())])
        return len(res.heartbeats)

    def finish(
        self,
        run_id: str,
        attempt: int,
        status: str,
        *,
        steps_done: int | None = None,
        diverged_step: int | None = None,
        summary: Mapping[str, Any] | None = None,
        error: str | None = None,
        now: float | None = None,
    ) -> bool:
        """Record the outcome of `attempt`. Ignored (False) if a newer attempt has been queued since."""
        res = self.finish_many([FinishedEvent(run_id, attempt, status, steps_done, diverged_step, summary, error, now)])
        return run_id in res

    def mark_running_many(self, events: Sequence[StartedEvent]) -> list[str]:
        """Bulk mark_running in one transaction; returns the run ids it applied to."""
        return self.apply_events(started=events).started

    def heartbeat_many(self, events: Sequence[HeartbeatEvent]) -> list[str]:
        """Bulk heartbeat in one transaction; returns the run ids refreshed."""
        return self.apply_events(heartbeats=events).heartbeats

    def finish_many(self, events: Sequence[FinishedEvent]) -> list[str]:
        """Bulk finish in one transaction; returns the run ids it applied to (events of an attempt
        older than the run's current one are ignored, as in finish)."""
        return self.apply_events(finished=events).finished

    def apply_events(
        self,
        *,
        started: Sequence[StartedEvent] = (),
        heartbeats: Sequence[HeartbeatEvent] = (),
        finished: Sequence[FinishedEvent] = (),
    ) -> AppliedEvents:
        """The recorder's status transitions for one ingested batch, in ONE transaction.

        Applied in lifecycle order (started, heartbeats, finished), each kind with one executemany,
        and the status rollup of the touched sweeps recounted once at the end: finishing a
        10,000-run sweep costs a handful of statements per batch, not a recount per run.
        Same guards as the single-run methods: an event whose attempt is not the run's current one
        changes nothing; started applies to queued/running/lost runs; a heartbeat to running/lost
        runs (lost -> running); a later event for the same run in the batch wins."""
        for fin in finished:
            if fin.status not in FINISH_STATUSES:
                raise RegistryError(f"status: must be one of {', '.join(FINISH_STATUSES)} (got {fin.status!r})")
        out = AppliedEvents([], [], [])
        if not (started or heartbeats or finished):
            return out
        beats = [(rid, hb) for hb in heartbeats for rid in hb.run_ids]
        ids = list(dict.fromkeys([e.run_id for e in started] + [r for r, _ in beats] + [e.run_id for e in finished]))
        b = sa.bindparam
        with self.engine.begin() as conn:
            current: dict[str, tuple[int, str]] = {}  # run_id -> (attempt, status) inside this transaction
            for chunk in _chunks(ids):
                for rid, att, status in conn.execute(
                    sa.select(runs.c.run_id, runs.c.attempt, runs.c.status).where(runs.c.run_id.in_(chunk))
                ):
                    current[rid] = (int(att), status)
            touched: set[str] = set()  # runs whose status changed: their sweeps need a recount

            rows: dict[str, dict[str, Any]] = {}
            for st in started:
                att, status = current.get(st.run_id, (-1, ""))
                if att == st.attempt and status in ("queued", "running", "lost"):
                    rows[st.run_id] = dict(k_run=st.run_id, k_att=st.attempt, v_worker=st.worker, v_t=float(st.time))
                    if status != "running":
                        touched.add(st.run_id)
                    current[st.run_id] = (att, "running")
            if rows:
                conn.execute(
                    runs.update()
                    .where(runs.c.run_id == b("k_run"), runs.c.attempt == b("k_att"))
                    .values(status="running", worker=b("v_worker"), started=b("v_t"), heartbeat=b("v_t"), ended=None),
                    list(rows.values()),
                )
            out.started.extend(rows)

            rows = {}
            for rid, hb in beats:
                att, status = current.get(rid, (-1, ""))
                if att == hb.attempt and status in ("running", "lost"):
                    if status == "lost":
                        touched.add(rid)
                    rows[rid] = dict(k_run=rid, k_att=hb.attempt, v_worker=hb.worker, v_t=float(hb.time))
                    current[rid] = (att, "running")
            if rows:
                conn.execute(
                    runs.update()
                    .where(runs.c.run_id == b("k_run"), runs.c.attempt == b("k_att"))
                    .values(status="running", heartbeat=b("v_t"), worker=b("v_worker")),
                    list(rows.values()),
                )
            out.heartbeats.extend(rows)

            rows = {}
            now = time.time()
            for ev in finished:
                att, status = current.get(ev.run_id, (-1, ""))
                if att == ev.attempt:
                    rows[ev.run_id] = dict(
                        k_run=ev.run_id,
                        k_att=ev.attempt,
                        v_status=ev.status,
                        v_ended=ev.time or now,
                        v_steps_done=ev.steps_done,
                        v_diverged_step=ev.diverged_step,
                        v_summary=_json(_clean_summary(ev.summary)),
                        v_error=(ev.error[:20_000] if ev.error else None),
                        v_result=int(ev.status in RESULT_STATUSES),
                    )
                    touched.add(ev.run_id)
            if rows:

                def result(column: str, value: Any) -> Any:
                    """A done/diverged finish is also the run's newest result (kept by reset_for_rerun)."""
                    return sa.case((b("v_result") == 1, value), else_=runs.c[column])

                conn.execute(
                    runs.update()
                    .where(runs.c.run_id == b("k_run"), runs.c.attempt == b("k_att"))
                    .values(
                        status=b("v_status"),
                        ended=b("v_ended"),
                        steps_done=b("v_steps_done"),
                        diverged_step=b("v_diverged_step"),
                        summary=b("v_summary"),
                        error=b("v_error"),
                        result_attempt=result("result_attempt", b("k_att")),
                        result_status=result("result_status", b("v_status")),
                        result_ended=result("result_ended", b("v_ended")),
                        result_steps_done=result("result_steps_done", b("v_steps_done")),
                        result_diverged_step=result("result_diverged_step", b("v_diverged_step")),
                        result_summary=result("result_summary", b("v_summary")),
                    ),
                    list(rows.values()),
                )
            out.finished.extend(rows)
            if touched:
                self._refresh_for_runs(conn, sorted(touched))
        return out

    def _resolve_ids(self, conn: Connection, sweep_or_run_id: str) -> list[str]:
        if conn.execute(sa.select(sweeps.c.id).where(sweeps.c.id == sweep_or_run_id)).first() is not None:
            return list(
                conn.execute(sa.select(sweep_runs.c.run_id).where(sweep_runs.c.sweep_id == sweep_or_run_id)).scalars()
            )
        if conn.execute(sa.select(runs.c.run_id).where(runs.c.run_id == sweep_or_run_id)).first() is not None:
            return [sweep_or_run_id]
        raise RegistryError(f"id: {sweep_or_run_id!r} is neither a sweep nor a run")

    def resolve_prefix(self, text: str, kinds: Sequence[str] = ("sweep", "run")) -> tuple[str, str]:
        """(kind, full id) of the sweep or run (`kinds`) that `text` names: its full id, or, as git takes
        a commit, a unique leading part of it of at least PREFIX_MIN characters (case-insensitive; `%`
        and `_` match themselves). A full id wins over longer ids it starts. Raises UnknownId when none
        matches, AmbiguousId naming the candidates when several do (both RegistryErrors)."""
        tables = {"sweep": sweeps.c.id, "run": runs.c.run_id}
        text = str(text).strip()
        found: list[tuple[str, str]] = []
        more = 0
        with self.engine.connect() as conn:
            for kind in kinds:
                col = tables[kind]
                if conn.execute(sa.select(col).where(col == text)).first() is not None:
                    return kind, text
            if len(text) < PREFIX_MIN:
                raise UnknownId(text, kinds)
            for kind in kinds:
                col = tables[kind]
                like = sa.func.lower(col).startswith(text.lower(), autoescape=True)
                ids = list(conn.execute(sa.select(col).where(like).order_by(col).limit(PREFIX_SHOWN + 1)).scalars())
                found += [(kind, i) for i in ids]
                if len(ids) > PREFIX_SHOWN:  # many: count the rest (rare, and only then)
                    n = conn.execute(sa.select(sa.func.count()).select_from(col.table).where(like)).scalar_one()
                    more += int(n) - len(ids)
        if not found:
            raise UnknownId(text, kinds)
        if len(found) > 1:
            more += max(0, len(found) - PREFIX_SHOWN)
            raise AmbiguousId(text, found[:PREFIX_SHOWN], more)
        return found[0]

    def run_ids_for(self, sweep_or_run_id: str) -> list[str]:
        """The runs a sweep id names, or [run_id] for a run id (RegistryError if neither)."""
        with self.engine.connect() as conn:
            return self._resolve_ids(conn, sweep_or_run_id)

    def request_cancel(self, sweep_or_run_id: str, *, now: float | None = None) -> int:
        """Cooperative cancel: flag the runs; queued ones become cancelled at once (workers skip them),
        running ones stop at their next flush and report `cancelled`. Returns how many were flagged."""
        with self.engine.begin() as conn:
            ids = self._resolve_ids(conn, sweep_or_run_id)
            n = 0
            for chunk in _chunks(ids):
                active = runs.c.status.in_(("queued", "running"))
                n += conn.execute(
                    runs.update().where(runs.c.run_id.in_(chunk), active).values(cancel_requested=True)
                ).rowcount
                conn.execute(
                    runs.update()
                    .where(runs.c.run_id.in_(chunk), runs.c.status == "queued")
                    .values(status="cancelled", ended=now or time.time())
                )
            self._refresh_for_runs(conn, ids)
        return n

    def is_cancel_requested(self, run_ids: Sequence[str]) -> set[str]:
        """The subset of run_ids whose cancel flag is set: the registry's record of a cancel request.
        Workers do not poll it; they poll tasks.cancel's flags (files or Redis keys) at every flush."""
        out: set[str] = set()
        with self.engine.connect() as conn:
            for chunk in _chunks(run_ids):
                out |= set(
                    conn.execute(
                        sa.select(runs.c.run_id).where(runs.c.run_id.in_(chunk), runs.c.cancel_requested.is_(True))
                    ).scalars()
                )
        return out

    def mark_lost(self, older_than: float, *, now: float | None = None) -> list[str]:
        """Running runs whose last heartbeat is more than `older_than` seconds old become `lost`."""
        cutoff = (now or time.time()) - older_than
        with self.engine.begin() as conn:
            stale = sa.func.coalesce(runs.c.heartbeat, runs.c.started, runs.c.created) < cutoff
            ids = list(conn.execute(sa.select(runs.c.run_id).where(runs.c.status == "running", stale)).scalars())
            if ids:
                for chunk in _chunks(ids):
                    conn.execute(
                        runs.update()
                        .where(runs.c.run_id.in_(chunk), runs.c.status == "running")
                        .values(
                            status="lost",
                            error=f"no heartbeat for more than {older_than:g} s (worker died or was disconnected)",
                        )
                    )
                self._refresh_for_runs(conn, ids)
        return ids

    def mark_lost_runs(self, attempts: Mapping[str, int], reason: str, *, now: float | None = None) -> list[str]:
        """These runs, at these attempts and still queued/running/lost, become `lost` with `reason`
        (tasks.local_queue: a unit that killed its local worker again is not retried). Returns the
        run ids changed; a run that finished or moved on to a newer attempt is left alone."""
        changed: list[str] = []
        unfinished = runs.c.status.in_(("queued", "running", "lost"))
        with self.engine.begin() as conn:
            for rid, att in attempts.items():
                n = conn.execute(
                    runs.update()
                    .where(runs.c.run_id == rid, runs.c.attempt == att, unfinished)
                    .values(status="lost", error=reason[:20_000], ended=now or time.time())
                ).rowcount
                if n:
                    changed.append(rid)
            if changed:
                self._refresh_for_runs(conn, changed)
        return changed

    def reset_for_rerun(self, run_ids: Sequence[str], *, sweep_id: str | None = None) -> dict[str, int]:
        """Queue runs again as a new attempt (attempt += 1). Returns run_id -> new attempt.

        The new attempt is launched for `sweep_id` (its links to these runs move to it: that sweep
        reads the new attempt's status, SWEEP_STATUS); without one, for the sweeps that launched the
        attempt being replaced (a redelivered unit).

        Points of older attempts stay in the metric store keyed by their attempt; events of an
        older attempt that arrive late are ignored by mark_running/heartbeat/finish. The result_*
        columns (the newest finished attempt) are left as they are: views show that attempt until
        the new one finishes done or diverged."""
        out: dict[str, int] = {}
        with self.engine.begin() as conn:
            for chunk in _chunks(run_ids):
                current = sa.select(runs.c.attempt).where(runs.c.run_id == sweep_runs.c.run_id).scalar_subquery()
                owners = sweep_runs.c.sweep_id == sweep_id if sweep_id is not None else sweep_runs.c.attempt == current
                conn.execute(
                    sweep_runs.update().where(sweep_runs.c.run_id.in_(chunk), owners).values(attempt=current + 1)
                )
                conn.execute(
                    runs.update()
                    .where(runs.c.run_id.in_(chunk))
                    .values(
                        attempt=runs.c.attempt + 1,
                        status="queued",
                        worker=None,
                        started=None,
                        ended=None,
                        heartbeat=None,
                        error=None,
                        diverged_step=None,
                        steps_done=None,
                        summary=None,
                        cancel_requested=False,
                    )
                )
                for rid, att in conn.execute(sa.select(runs.c.run_id, runs.c.attempt).where(runs.c.run_id.in_(chunk))):
                    out[rid] = int(att)
            self._refresh_for_runs(conn, list(out))
        return out


IN_CHUNK = 500  # ids per `IN (...)`: well below SQLite's bound-parameter limit (999 on old builds)


def _chunks(items: Iterable[str], n: int = IN_CHUNK) -> Iterable[list[str]]:
    """`items` in lists of at most n, for `IN (...)` clauses of any length."""
    listed = list(items)
    for i in range(0, len(listed), n):
        yield listed[i : i + n]


def _unreadable(url: str, exc: Exception) -> RegistryUnreadable:
    """A message naming the file (or server) and what to do; the password of a URL is hidden."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        path = Path(parsed.database).resolve()
        if any(w in reason.lower() for w in ("not a database", "malformed", "corrupt")):
            return RegistryUnreadable(
                f"registry: {path} is not a readable SQLite database ({reason}). Nothing was changed. Move it "
                f"aside (mv {path} {path}.broken) to start an empty registry, or restore it from a backup"
            )
        return RegistryUnreadable(f"registry: cannot open {path} ({reason})")
    return RegistryUnreadable(f"registry: cannot open {parsed.render_as_string(hide_password=True)} ({reason})")


_CHECKED: set[tuple[int, int]] = set()  # (device, inode) of the SQLite files this process checked


def _quick_check_once(engine: Engine, url: str) -> None:
    """PRAGMA quick_check, once per file per process: every page's structure, so a cut or junk-filled
    file is named at open by every command, not only by the ones whose query meets the damaged page
    (~50 ms on a 10,000-run, 12 MB registry)."""
    path = sqlite_path(url)
    try:
        st = path.stat() if path is not None else None
    except OSError:
        st = None
    if st is None or (st.st_dev, st.st_ino) in _CHECKED:
        return
    with engine.connect() as conn:
        rows = [r[0] for r in conn.exec_driver_sql("PRAGMA quick_check(1)").fetchall()]
    if rows != ["ok"]:
        raise _unreadable(url, RuntimeError(f"database disk image is malformed: {rows[0] if rows else '?'}"))
    _CHECKED.add((st.st_dev, st.st_ino))


def _name_damage(engine: Engine, url: str) -> None:
    """A damaged page that a later query meets (the open read only the schema) raises RegistryUnreadable
    naming the file and what to do, like a damage found at open, instead of a raw DatabaseError."""

    @event.listens_for(engine, "handle_error")
    def _damaged(ctx: Any) -> None:
        text = str(ctx.original_exception).lower()
        if any(w in text for w in ("not a database", "malformed", "corrupt")):
            raise _unreadable(url, ctx.original_exception)


def _sqlite_pragmas(engine: Engine, *, read_only: bool = False) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" hook emit BEGIN itself (pysqlite's own BEGIN is deferred).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if not read_only:  # a reader changes nothing, not even the journal mode
            cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, and vice versa
            cur.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; a commit is not an fsync
        cur.execute("PRAGMA busy_timeout=30000")  # several processes write: wait, don't fail
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")  # a reader takes no write lock


RUN_COLUMNS = ("run_id", "gamma", "eta", "seed", "depth", "width", "status", "attempt", "diverged_step")


def raw_rows(registry: Registry, *queries: Any) -> list[tuple[Any, ...]]:
    """The rows of Core SELECTs, one after the other, on a raw DB-API cursor: no Row objects (half the
    time at 10k rows) and, on SQLite, no BEGIN IMMEDIATE (a read-only autocommit SELECT in WAL mode
    never waits for a writer)."""
    rows: list[tuple[Any, ...]] = []
    dialect = registry.engine.dialect
    raw = registry.engine.raw_connection()  # pooled; returned (and rolled back) on close
    try:
        cur = raw.cursor()
        for q in queries:
            compiled = q.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
            params = compiled.params
            args: Any = [params[k] for k in compiled.positiontup or ()] if compiled.positional else params
            cur.execute(compiled.string, args)
            rows.extend(tuple(r) for r in cur.fetchall())
        cur.close()
    finally:
        raw.close()
    return rows


def runs_columns(
    registry: Registry,
    *,
    sweep_id: str | None = None,
    run_ids: Sequence[str] | None = None,
    fields: Sequence[str] = RUN_COLUMNS,
) -> dict[str, list[Any]]:
    """Lean column lists of runs (no JSON parsing, no Row objects): by default run_id, gamma, eta, seed,
    depth, width, status, attempt, diverged_step (`fields` picks a subset). For the query side, where
    10,000 runs must load in milliseconds: the SELECT runs on a raw DB-API cursor, without SQLAlchemy's
    Row objects (half the time at 10k rows) and, on SQLite, without the BEGIN IMMEDIATE the registry's
    transactions take -- a read-only autocommit SELECT in WAL mode never waits for a writer.
    `fields` may also name the VIEW_COLUMNS (shown_attempt, shown_status, shown_diverged_step,
    effective_status, newer_status, ...): what the read side shows of each run."""
    bad = sorted(set(fields) - set(RUN_COLUMNS) - set(VIEW_COLUMNS))
    if bad:
        raise RegistryError(f"fields: {bad[0]!r} is not one of {', '.join([*RUN_COLUMNS, *VIEW_COLUMNS])}")
    cols = [VIEW_COLUMNS[name].label(name) if name in VIEW_COLUMNS else runs.c[name] for name in fields]
    if sweep_id is not None:
        queries = [
            sa.select(*cols)
            .join(sweep_runs, sweep_runs.c.run_id == runs.c.run_id)
            .where(sweep_runs.c.sweep_id == sweep_id)
        ]
    else:
        queries = [
            sa.select(*cols).where(runs.c.run_id.in_(chunk))
            for chunk in _chunks(dict.fromkeys(run_ids or []))
        ]
    rows = raw_rows(registry, *queries)
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in cols]
    return {name: list(v) for name, v in zip(fields, columns, strict=True)}


def runs_frame(registry: Registry, *, sweep_id: str | None = None, run_ids: Sequence[str] | None = None) -> Any:
    """runs_columns as a pandas DataFrame."""
    import pandas as pd

    data = runs_columns(registry, sweep_id=sweep_id, run_ids=run_ids)
    frame = pd.DataFrame(data)
    for name in ("gamma", "eta"):
        frame[name] = frame[name].astype("float64")
    return frame


# ----------------------------------------------------------------------------- read-only opens


class RegistryReadOnly(RegistryError):
    """A write to a registry opened read-only (a read-only data folder): one line, never a traceback."""


def sqlite_path(url: str) -> Path | None:
    """The database file of an SQLite URL; None for an in-memory database or another backend."""
    parsed = sa.engine.make_url(url)
    db = parsed.database
    if parsed.get_backend_name() != "sqlite" or not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db).resolve()


def sqlite_read_only(url: str) -> bool:
    """True when this process can write neither the SQLite file of `url` nor, beside it, the -wal and
    -shm files a writer needs (a read-only mount, no write permission): such a registry is read only."""
    from storage.settings import write_problem

    path = sqlite_path(url)
    return path is not None and (write_problem(path) is not None or write_problem(path.parent) is not None)


def _sqlite_ro_connect(url: str) -> tuple[Callable[[], Any], Path | None]:
    """A DB-API connect function opening the SQLite file read-only, and the folder of a private copy
    when one is read instead (removed by Registry.close).

    `mode=ro` reads a WAL-mode database, its WAL included, when the -shm index exists or can be created
    beside it. In a read-only folder without a -wal (a cleanly closed registry) `immutable=1` reads the
    file alone, which then holds everything. A -wal without its -shm can be neither read in place nor
    ignored (it holds committed transactions), so a private copy of both is read."""
    import sqlite3
    import tempfile
    import urllib.parse

    from storage.settings import write_problem

    path = sqlite_path(url)
    if path is None:
        raise RegistryError(f"registry: a read-only open needs an SQLite file or PostgreSQL (got {_where(url)})")
    if not path.is_file():
        raise RegistryUnreadable(
            f"registry: there is no registry at {path} and its folder is read-only, so none can be created: "
            "nothing to read (launch sweeps on a writable data folder first)"
        )
    target, query, copy_dir = path, "mode=ro", None
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    if write_problem(path.parent) is not None:  # nothing can be created beside it
        if not (wal.is_file() and wal.stat().st_size > 0):
            query = "immutable=1"
        elif not shm.is_file():
            copy_dir = Path(tempfile.mkdtemp(prefix="gamma-lab-registry-"))
            target = copy_dir / path.name
            shutil.copyfile(path, target)
            shutil.copyfile(wal, copy_dir / wal.name)
    uri = f"file:{urllib.parse.quote(str(target))}?{query}"
    return (lambda: sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False)), copy_dir


def _refuse_writes(engine: Engine, url: str, *, postgres: bool) -> None:
    """A write through a read-only registry raises RegistryReadOnly naming it (PostgreSQL sessions are
    made read-only too, so nothing is written there either)."""
    if postgres:

        @event.listens_for(engine, "connect")
        def _read_only_session(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            cur.close()
            dbapi_conn.commit()

    @event.listens_for(engine, "handle_error")
    def _named(ctx: Any) -> None:
        text = str(ctx.original_exception).lower()
        if "readonly database" in text or "read-only transaction" in text:
            raise RegistryReadOnly(
                f"registry: {_where(url)} is opened read-only (a read-only data folder); nothing can be changed "
                "there: launching, cancelling and rerunning need a writable data folder"
            )


def _where(url: str) -> str:
    """The file of an SQLite URL, else the URL with its password hidden (for messages)."""
    path = sqlite_path(url)
    return str(path) if path is not None else sa.engine.make_url(url).render_as_string(hide_password=True)
