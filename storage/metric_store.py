"""DuckDB metric store: long-format points (run_key, attempt, seq, step, metric, value) + summaries.

Facts that shape it (issue 3):
- A DuckDB file is open either by ONE read-write process or by several read-only ones, never both; a
  second process gets "Could not set lock on file". So only the recorder opens it read-write
  (storage.recorder); readers in the recorder's process use their own cursor (conn.cursor()) per thread
  (a connection serializes its queries), never a second duckdb.connect.
- Bulk inserts only: one Arrow table per transaction loads about a million rows a second, row-wise
  executemany is thousands of times slower. No primary key or index on `points` (they slow loading and
  rarely help); integer run keys (not 16-char strings) and rows appended sorted by (run, step) so the
  per-row-group min/max zone maps prune scans by run_key and step.
- No DDL while runs are active (all tables exist from the first open); CHECKPOINT when a run ends so the
  WAL does not grow without bound.

Exactly-once: `ingested` holds the (run_key, attempt, seq) of every stored batch and is checked and
extended in the same transaction as the points insert, so a batch replayed after a crash (ingested and
committed, but not yet acknowledged on the bus) is dropped, and one that was not committed is stored.

`summaries` keeps, per (run, attempt, metric), the count, last step/value, min and max (finite values
only) with their steps, and the first non-finite step: heatmaps read this small table instead of
scanning millions of points.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS run_keys (run_key INTEGER NOT NULL, run_id VARCHAR NOT NULL)",
    # no PRIMARY KEY / index on purpose: they slow bulk loading and zone maps do the pruning
    "CREATE TABLE IF NOT EXISTS points (run_key INTEGER NOT NULL, attempt INTEGER NOT NULL, "
    "seq INTEGER NOT NULL, step BIGINT NOT NULL, metric VARCHAR NOT NULL, value DOUBLE)",
    "CREATE TABLE IF NOT EXISTS ingested (run_key INTEGER NOT NULL, attempt INTEGER NOT NULL, "
    "seq INTEGER NOT NULL, n_points INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS summaries (run_key INTEGER NOT NULL, attempt INTEGER NOT NULL, "
    "metric VARCHAR NOT NULL, n BIGINT NOT NULL, last_step BIGINT, last_value DOUBLE, "
    "min_value DOUBLE, min_step BIGINT, max_value DOUBLE, max_step BIGINT, first_nonfinite_step BIGINT, "
    "PRIMARY KEY (run_key, attempt, metric))",
    "CREATE TABLE IF NOT EXISTS store_meta (key VARCHAR PRIMARY KEY, value VARCHAR)",
]
STORE_VERSION = "1"

# Per-batch aggregate merged into `summaries`. In ON CONFLICT DO UPDATE, bare names are the stored row
# and EXCLUDED.* the new one; every SET expression sees the old row.
_UPSERT_SUMMARIES = """
INSERT INTO summaries
SELECT run_key, attempt, metric, count(*) AS n,
       max(step) AS last_step, arg_max(value, step) AS last_value,
       min(value) FILTER (WHERE isfinite(value)) AS min_value,
       arg_min(step, value) FILTER (WHERE isfinite(value)) AS min_step,
       max(value) FILTER (WHERE isfinite(value)) AS max_value,
       arg_max(step, value) FILTER (WHERE isfinite(value)) AS max_step,
       min(step) FILTER (WHERE value IS NULL OR NOT isfinite(value)) AS first_nonfinite_step
FROM incoming GROUP BY run_key, attempt, metric
ON CONFLICT (run_key, attempt, metric) DO UPDATE SET
    n = n + EXCLUDED.n,
    last_value = CASE WHEN EXCLUDED.last_step >= last_step THEN EXCLUDED.last_value ELSE last_value END,
    last_step = greatest(last_step, EXCLUDED.last_step),
    min_step = CASE WHEN min_value IS NULL OR EXCLUDED.min_value < min_value
                    THEN EXCLUDED.min_step ELSE min_step END,
    min_value = CASE WHEN min_value IS NULL OR EXCLUDED.min_value < min_value
                     THEN EXCLUDED.min_value ELSE min_value END,
    max_step = CASE WHEN max_value IS NULL OR EXCLUDED.max_value > max_value
                    THEN EXCLUDED.max_step ELSE max_step END,
    max_value = CASE WHEN max_value IS NULL OR EXCLUDED.max_value > max_value
                     THEN EXCLUDED.max_value ELSE max_value END,
    first_nonfinite_step = CASE WHEN first_nonfinite_step IS NULL THEN EXCLUDED.first_nonfinite_step
                                WHEN EXCLUDED.first_nonfinite_step IS NULL THEN first_nonfinite_step
                                ELSE least(first_nonfinite_step, EXCLUDED.first_nonfinite_step) END
"""


class StoreCorrupt(RuntimeError):
    """The metrics file exists but is not a readable DuckDB database. Never answered by replacing it
    with an empty one: that would silently lose every stored curve."""

    @classmethod
    def of(cls, path: Path, exc: Exception) -> StoreCorrupt:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return cls(
            f"metrics file {path} cannot be opened ({reason}). Nothing was changed. Move it aside "
            f"(mv {path} {path}.broken) to start an empty metric store — run statuses stay in the registry, "
            "the stored curves are lost — or restore it from a backup"
        )


class StoreLocked(RuntimeError):
    """The DuckDB file is held read-write by another process (the recorder)."""


@dataclass
class PointsBatch:
    """One points event: a columnar batch of one (run, attempt), numbered by seq."""

    run_id: str
    attempt: int
    seq: int
    step: np.ndarray  # (P,) int64
    metric: Sequence[str]  # (P,)
    value: np.ndarray  # (P,) float64, NaN/inf kept

    @classmethod
    def from_event(cls, ev: dict[str, Any]) -> PointsBatch:
        value = np.array([np.nan if v is None else v for v in ev["value"]], dtype=np.float64)
        return cls(ev["run_id"], int(ev["attempt"]), int(ev["seq"]), np.asarray(ev["step"], dtype=np.int64),
                   list(ev["metric"]), value)


_OPEN: dict[Path, weakref.ReferenceType[MetricStore]] = {}
_OPEN_LOCK = threading.Lock()


class MetricStore:
    """The DuckDB file. Read-write: one per process and only in the recorder's process."""

    def __init__(self, path: str | Path, *, read_only: bool = False):
        self.path = Path(path).resolve()
        self.read_only = read_only
        try:
            self.conn = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise StoreLocked(
                    f"metrics file {self.path} is held by another process ({exc}); only the process running "
                    "the recorder can read it"
                ) from None
            raise StoreCorrupt.of(self.path, exc) from None
        except duckdb.Error as exc:  # a truncated file fails in deserialization, not with an IOException
            raise StoreCorrupt.of(self.path, exc) from None
        self._write_lock = threading.Lock()  # serializes everything that executes on self.conn
        self._reader_lock = threading.Lock()  # only guards making reader cursors (see cursor())
        self._reader_root: duckdb.DuckDBPyConnection | None = self.conn.cursor()
        self._keys: dict[str, int] = {}
        try:  # a truncated file opens, then fails on its first read
            if not read_only:
                for ddl in _SCHEMA:
                    self.conn.execute(ddl)
                self.conn.execute("INSERT OR IGNORE INTO store_meta VALUES ('version', ?)", [STORE_VERSION])
            self._load_keys()
        except duckdb.Error as exc:
            self.conn.close()
            raise StoreCorrupt.of(self.path, exc) from None
        if not read_only:
            with _OPEN_LOCK:
                _OPEN[self.path] = weakref.ref(self)

    def _load_keys(self) -> None:
        try:
            rows = self.conn.execute("SELECT run_id, run_key FROM run_keys").fetchall()
        except duckdb.CatalogException:  # read-only open of an empty file
            rows = []
        self._keys = {r: int(k) for r, k in rows}

    # -- lifecycle

    def close(self) -> None:
        with _OPEN_LOCK:
            ref = _OPEN.get(self.path)
            if ref is not None and ref() is self:
                del _OPEN[self.path]
        with self._reader_lock:
            if self._reader_root is not None:
                self._reader_root.close()
                self._reader_root = None
        with self._write_lock:
            self.conn.close()

    def __enter__(self) -> MetricStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A NEW reader connection to this database; the caller closes it (or use `reader()`).

        Why not one cached cursor per thread: in DuckDB 2.x a connection that holds an unfinished
        result (a fetch interrupted by an exception, a fetchone() of a multi-row result) refuses other
        work ("connection has an unfinished result"), so one half-read query would poison every later
        query of that thread. A fresh cursor per query context costs ~0.1 ms.
        Why not self.conn.cursor(): a DuckDB connection is not thread-safe and the recorder thread
        executes on self.conn; readers are made from `_reader_root`, which nobody executes on, under a
        lock that ingest never holds (so a reader never waits for an ingest transaction)."""
        with self._reader_lock:
            if self._reader_root is None:
                raise RuntimeError(f"MetricStore: {self.path} is closed")
            return self._reader_root.cursor()

    @contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A fresh reader connection for one query context, closed on exit (whatever happened)."""
        cur = self.cursor()
        try:
            yield cur
        finally:
            cur.close()

    # -- run keys

    def run_keys(self, run_ids: Iterable[str]) -> dict[str, int]:
        """run_id -> integer key, for ids that have points (reloads once for ids ingested meanwhile)."""
        ids = list(run_ids)
        if self.read_only or any(i not in self._keys for i in ids):
            if not self.read_only:
                with self._write_lock:
                    self._load_keys()
            else:
                self._load_keys()
        return {i: self._keys[i] for i in ids if i in self._keys}

    def _assign_keys(self, run_ids: Iterable[str]) -> None:
        new = sorted({r for r in run_ids if r not in self._keys})
        if not new:
            return
        start = max(self._keys.values(), default=-1) + 1
        rows = {r: start + i for i, r in enumerate(new)}
        table = pa.table({"run_key": pa.array(list(rows.values()), pa.int32()),
                          "run_id": pa.array(list(rows.keys()), pa.string())})
        self.conn.register("new_keys", table)
        try:
            self.conn.execute("INSERT INTO run_keys SELECT run_key, run_id FROM new_keys")
        finally:
            self.conn.unregister("new_keys")
        self._keys.update(rows)

    # -- ingest

    def ingest(self, batches: Sequence[PointsBatch]) -> int:
        """Store the batches not stored before, in ONE transaction. Returns the number of new points."""
        if self.read_only:
            raise RuntimeError("MetricStore: opened read-only; only the recorder ingests")
        if not batches:
            return 0
        with self._write_lock:
            conn = self.conn
            conn.execute("BEGIN TRANSACTION")
            try:
                self._assign_keys(b.run_id for b in batches)
                # drop batches already stored (replay after a crash) and repeats within this call
                keys = [(self._keys[b.run_id], b.attempt, b.seq) for b in batches]
                wanted = pa.table({
                    "run_key": pa.array([k[0] for k in keys], pa.int32()),
                    "attempt": pa.array([k[1] for k in keys], pa.int32()),
                    "seq": pa.array([k[2] for k in keys], pa.int32()),
                })
                conn.register("wanted", wanted)
                try:
                    done = set(conn.execute(
                        "SELECT i.run_key, i.attempt, i.seq FROM ingested i "
                        "SEMI JOIN wanted w USING (run_key, attempt, seq)").fetchall())
                finally:
                    conn.unregister("wanted")
                fresh, seen = [], set(done)
                for key, b in zip(keys, batches, strict=True):
                    if key in seen:
                        continue
                    seen.add(key)
                    fresh.append((key, b))
                n = 0
                if fresh:
                    incoming = _to_arrow(fresh)
                    n = incoming.num_rows
                    conn.register("incoming", incoming)
                    try:
                        if n:
                            conn.execute("INSERT INTO points SELECT * FROM incoming")
                            conn.execute(_UPSERT_SUMMARIES)
                    finally:
                        conn.unregister("incoming")
                    marks = pa.table({
                        "run_key": pa.array([k[0] for k, _ in fresh], pa.int32()),
                        "attempt": pa.array([k[1] for k, _ in fresh], pa.int32()),
                        "seq": pa.array([k[2] for k, _ in fresh], pa.int32()),
                        "n_points": pa.array([len(b.step) for _, b in fresh], pa.int32()),
                    })
                    conn.register("marks", marks)
                    try:
                        conn.execute("INSERT INTO ingested SELECT * FROM marks")
                    finally:
                        conn.unregister("marks")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                self._load_keys()  # keys assigned in the rolled-back transaction are gone
                raise
        return n

    def checkpoint(self) -> None:
        """Fold the WAL into the file (called when a run ends)."""
        if self.read_only:
            return
        with self._write_lock:
            try:
                self.conn.execute("CHECKPOINT")
            except duckdb.TransactionException:
                pass  # a reader's open transaction: the next run's end will checkpoint

    # -- small reads

    def count_points(self, run_id: str | None = None, attempt: int | None = None) -> int:
        sql, params = "SELECT count(*) FROM points", []
        if run_id is not None:
            key = self.run_keys([run_id]).get(run_id)
            if key is None:
                return 0
            sql, params = sql + " WHERE run_key = ?", [key]
            if attempt is not None:
                sql, params = sql + " AND attempt = ?", [key, attempt]
        with self.reader() as cur:
            return int(cur.execute(sql, params).fetchall()[0][0])

    def count_duplicates(self) -> int:
        """Points whose (run, attempt, seq, step, metric) occurs more than once (0 when exactly-once holds)."""
        with self.reader() as cur:
            rows = cur.execute(
                "SELECT coalesce(sum(c - 1), 0) FROM (SELECT count(*) c FROM points "
                "GROUP BY run_key, attempt, seq, step, metric HAVING count(*) > 1)").fetchall()
        return int(rows[0][0])


def _to_arrow(fresh: list[tuple[tuple[int, int, int], PointsBatch]]) -> pa.Table:
    """Concatenate batches into one Arrow table sorted by (run_key, step): zone maps then prune.

    Batches are put in (run_key, first step) order first; the rows then are usually sorted already
    (each batch's steps ascend), which a vectorized check confirms, so the P-row lexsort is the
    exception. Metric names repeat (a handful per batch, often one): dictionary-encoded, and a batch
    holding a single name is encoded with np.full instead of a per-row Python lookup."""
    fresh = sorted(fresh, key=lambda kb: (kb[0][0], int(kb[1].step[0]) if len(kb[1].step) else 0))
    sizes = [len(b.step) for _, b in fresh]
    run_key = np.repeat(np.array([k[0] for k, _ in fresh], dtype=np.int32), sizes)  # (P,)
    attempt = np.repeat(np.array([k[1] for k, _ in fresh], dtype=np.int32), sizes)
    seq = np.repeat(np.array([k[2] for k, _ in fresh], dtype=np.int32), sizes)
    step = np.concatenate([np.asarray(b.step, dtype=np.int64) for _, b in fresh])  # (P,)
    value = np.concatenate([np.asarray(b.value, dtype=np.float64) for _, b in fresh])  # (P,)
    distinct = [set(b.metric) for _, b in fresh]
    names = sorted(set().union(*distinct))
    lookup = {m: i for i, m in enumerate(names)}
    codes = np.concatenate([
        np.full(len(b.metric), lookup[next(iter(d))], dtype=np.int32) if len(d) == 1
        else np.fromiter(map(lookup.__getitem__, b.metric), dtype=np.int32, count=len(b.metric))
        for d, (_, b) in zip(distinct, fresh, strict=True)])  # (P,)
    d_key, d_step = np.diff(run_key), np.diff(step)
    if not np.all((d_key > 0) | ((d_key == 0) & (d_step >= 0))):
        order = np.lexsort((step, run_key))
        run_key, attempt, seq, step, value, codes = (a[order] for a in (run_key, attempt, seq, step, value, codes))
    metric_arr = pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(names, pa.string()))
    return pa.table({
        "run_key": run_key, "attempt": attempt, "seq": seq, "step": step, "metric": metric_arr, "value": value,
    })


def open_reader(path: str | Path) -> tuple[MetricStore | None, bool]:
    """A store to read from: (store, owned). This process's read-write store if the recorder runs
    here (owned=False: do not close it), else a fresh read-only one (owned=True: close after use; a
    read-only handle kept open would stop a recorder from starting). (None, False) when no file yet.
    Raises StoreLocked when another process records."""
    p = Path(path).resolve()
    with _OPEN_LOCK:
        ref = _OPEN.get(p)
        store = ref() if ref is not None else None
    if store is not None:
        return store, False
    if not p.exists():
        return None, False
    return MetricStore(p, read_only=True), True
