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

Damage (issue 9): a cut or junk-filled file is refused at open with StoreCorrupt before DuckDB may
write to it (DuckDB itself opened a file cut at 3/4 and wrote to it): the header's block count
against the file size (microseconds), the blocks in use when the file is short, the small tables
read in full (milliseconds), and every point read (3.5 s per 400 MB) only when the file changed
since a read-write store last closed it cleanly (`<file>.verified`). A damaged block met later marks
the store damaged (`<file>.damaged`): it closes without a checkpoint and is never written again.

`summaries` keeps, per (run, attempt, metric), the count, last step/value, min and max (finite values
only) with their steps, and the first non-finite step: heatmaps read this small table instead of
scanning millions of points.

`run_arrays` keeps a run's final-function snapshot (storage.run_arrays), one row per (run, attempt,
name), exactly once by its primary key; a purge deletes it with the points.
"""

from __future__ import annotations

import json
import struct
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from storage import run_arrays

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
    run_arrays.DDL,  # created on the first read-write open of a store from before it
]
STORE_VERSION = "1"
_COUNT_RUNS_POINTS = "SELECT count(*) FROM points WHERE list_contains(?, run_key)"  # ? = a list of run keys

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
    def of(cls, path: Path, exc: Exception | str) -> StoreCorrupt:
        text = exc if isinstance(exc, str) else str(exc)
        reason = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        return cls(
            f"metrics file {path} cannot be opened ({reason}). Nothing was changed. Move it aside "
            f"(mv {path} {path}.broken, and its .wal if there is one) to start an empty metric store — run "
            "statuses stay in the registry, the stored curves are lost — or restore it from a backup"
        )


# The file layout of DuckDB's single-file storage (stable since 0.10): a 4 KiB main header ("DUCK" at
# byte 8), then two 4 KiB database headers (the newer `iteration` is current), then the blocks. Each
# database header: checksum, iteration, meta_block, free_list, block_count, block_alloc_size (u64 LE).
_HEADER_BYTES = 3 * 4096
_MAGIC_AT = 8


def _identity(path: Path) -> list[int] | None:
    """What a file is now (device, inode, size, mtime): a restored or moved-aside file differs."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def verified_note(path: Path) -> Path:
    """The file's identity when a read-write store last closed it cleanly: an open that finds the same
    file skips reading every point (see MetricStore._read_points)."""
    return Path(str(path) + ".verified")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        note = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return note if isinstance(note, dict) else {}


def damage_marker(path: Path) -> Path:
    """Written when a store is found damaged: later opens refuse the same file at once, unwritten."""
    return Path(str(path) + ".damaged")


def check_file(path: Path) -> int | None:
    """Cheap checks before DuckDB opens (or writes) the file: a damage marker for this very file, and
    the header's block count against the file size. DuckDB itself opened a file cut at 3/4 without a
    word when the blocks it read at open lay before the cut (then wrote to it). Microseconds, whatever
    the file's size. Raises StoreCorrupt.

    Returns None when the file holds every block its header counts, else how many whole blocks it
    holds: a healthy file can be shorter (a checkpoint cuts free blocks off the end after writing the
    header), so MetricStore then checks that no block in use lies past the end (_check_used_blocks)."""
    marker = damage_marker(path)
    if marker.exists():
        note = _read_json(marker)
        if note.get("identity") is not None and note.get("identity") == _identity(path):
            raise StoreCorrupt.of(path, str(note.get("reason") or "found damaged before"))
        marker.unlink(missing_ok=True)  # moved aside or restored since: that file is not this one
    try:
        size = path.stat().st_size
        if size == 0:
            return None  # a fresh file DuckDB has not written yet
        with open(path, "rb") as fh:
            head = fh.read(_HEADER_BYTES)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreCorrupt.of(path, exc) from None
    if head[_MAGIC_AT:_MAGIC_AT + 4] != b"DUCK":
        raise StoreCorrupt.of(path, "not a DuckDB file: no DUCK magic in its header")
    if len(head) < _HEADER_BYTES:
        raise StoreCorrupt.of(path, f"truncated: {size} bytes, shorter than DuckDB's {_HEADER_BYTES}-byte header")
    headers = [struct.unpack_from("<6Q", head, off) for off in (4096, 8192)]
    _sum, _iteration, _meta, _free, blocks, block_size = max(headers, key=lambda h: h[1])
    if not (4096 <= block_size <= 1 << 26 and block_size & (block_size - 1) == 0 and blocks < 1 << 40):
        return None  # a layout this check does not know: DuckDB's own reads decide
    if size >= _HEADER_BYTES + blocks * block_size:
        return None
    return (size - _HEADER_BYTES) // block_size


_DAMAGE_WORDS = ("corrupt", "checksum", "could not read enough bytes", "invalidated", "serialization error")


def is_damage(exc: BaseException) -> bool:
    """A DuckDB error that means the file is damaged (not a bad query, not a full disk)."""
    from storage.diskspace import is_disk_full

    return isinstance(exc, duckdb.Error) and not is_disk_full(exc) and is_damage_text(str(exc))


def is_damage_text(text: str) -> bool:
    """The same, from an error's text (an export's `.error` answer, say)."""
    return any(w in text.lower() for w in _DAMAGE_WORDS) and "no space left" not in text.lower()


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
        self.damaged: StoreCorrupt | None = None  # set when a read or write found the file damaged
        present = check_file(self.path)  # before DuckDB opens it: a damaged file is never written again
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
        self._keys_stale = False
        self._left_unwritten = False
        try:  # a damaged file may open, then fail on its first read: read the small tables first
            if present is not None:
                self._check_used_blocks(present)
            self._read_small_tables()
            if not read_only and _identity(self.path) != _read_json(verified_note(self.path)).get("identity"):
                self._read_points()  # changed since a recorder last closed it: a crash, a cut, junk, a restore
            if not read_only and not self._has_schema():  # DDL only on a new file: an open writes nothing
                for ddl in _SCHEMA:
                    self.conn.execute(ddl)
                self.conn.execute("INSERT OR IGNORE INTO store_meta VALUES ('version', ?)", [STORE_VERSION])
            self._load_keys()
        except StoreCorrupt:
            self._close_unwritten()
            raise
        except duckdb.Error as exc:
            self._close_unwritten()
            raise StoreCorrupt.of(self.path, exc) from None
        if not read_only:
            with _OPEN_LOCK:
                _OPEN[self.path] = weakref.ref(self)

    def _check_used_blocks(self, present: int) -> None:
        """The file is shorter than its header says: every block the database uses (metadata, and each
        table's segments) must lie within it, or it was cut. ~10 ms on a 5 MB store, ~0.5 s on 400 MB;
        only taken when the file is short, i.e. after a checkpoint that shrank it, until the next."""
        parts = ["SELECT block_id AS b FROM pragma_metadata_info()"]
        for (table,) in self.conn.execute("SELECT table_name FROM duckdb_tables()").fetchall():
            info = f"pragma_storage_info('{table}')"
            parts += [f"SELECT block_id FROM {info}", f"SELECT unnest(additional_block_ids) FROM {info}"]
        top = self.conn.execute(f"SELECT max(b) FROM ({' UNION ALL '.join(parts)})").fetchall()[0][0]
        if top is not None and top >= present:
            raise StoreCorrupt.of(
                self.path, f"truncated: block {top} is in use, the file ends within block {present} "
                f"({self.path.stat().st_size} bytes)")
        if self.read_only:  # the probe below needs a write transaction; a reader meets damage when it reads
            return
        # index blocks are not listed there: look every key up (inserting nothing, rolled back: unwritten)
        tables = {r[0] for r in self.conn.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        self.conn.execute("BEGIN TRANSACTION")
        try:
            for table in ("summaries", "store_meta", "run_arrays"):
                if table in tables:
                    self.conn.execute(f"INSERT INTO {table} SELECT * FROM {table} ON CONFLICT DO NOTHING")
            if "summaries" in tables:  # and a key past every stored one (where the next run's go)
                self.conn.execute("INSERT INTO summaries SELECT coalesce(max(run_key), 0) + 1, 0, 'probe', 0, "
                                  "NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM summaries")
        finally:
            self.conn.execute("ROLLBACK")

    def _has_schema(self) -> bool:
        names = {r[0] for r in self.conn.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        return {"run_keys", "points", "ingested", "summaries", "store_meta", "run_arrays"} <= names

    def _read_small_tables(self) -> None:
        """Read every row and column of the tables whose size follows runs and batches, not points
        (run_keys, ingested, summaries, store_meta): milliseconds on a 400 MB file, and DuckDB checks
        each block's checksum as it reads it. The points table is not scanned at open: 3.5 s per 400 MB
        (54 M points) on a 2-core machine, paid by every `status`; a damaged points block is found at
        the first read or write that touches it (then `damaged`, the marker, and no more writes)."""
        tables = {r[0] for r in self.conn.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        for table in ("run_keys", "ingested", "summaries", "store_meta"):
            if table in tables:
                self.conn.execute(f"SELECT * FROM {table}").fetchall()

    def _read_points(self) -> None:
        """Read every column of every point (DuckDB checks each block's checksum as it reads it): junk
        in a points block is found here, at open, instead of by the first export that reads it. Only
        when the file is not as the last clean close left it (verified_note): 3.5 s per 400 MB on two
        cores, so not at every open of every `status`."""
        if {"points"} <= {r[0] for r in self.conn.execute("SELECT table_name FROM duckdb_tables()").fetchall()}:
            self.conn.execute(
                "SELECT count(*), sum(run_key), sum(attempt), sum(seq), sum(step), max(metric), sum(value) FROM points"
            ).fetchall()

    def _close_unwritten(self) -> None:
        """Close without folding the WAL into a file found damaged (DuckDB checkpoints at close)."""
        self._left_unwritten = True  # a later close() must not note the file as cleanly closed
        try:
            self.conn.execute("PRAGMA disable_checkpoint_on_shutdown")
        except duckdb.Error:
            pass
        try:
            self.conn.close()
        except duckdb.Error:
            pass

    def mark_damaged(self, exc: BaseException) -> StoreCorrupt:
        """The file is damaged (found by a read or a write): remember it (`damaged`, and a marker file
        that makes every later open refuse this same file at once), close without writing, and return
        the StoreCorrupt to raise. Moving the file aside or restoring it clears the marker's effect."""
        if self.damaged is None:
            self.damaged = StoreCorrupt.of(self.path, exc if isinstance(exc, Exception) else str(exc))
            try:
                damage_marker(self.path).write_text(json.dumps(
                    {"identity": _identity(self.path), "reason": str(exc).strip().splitlines()[0]}) + "\n")
            except OSError:
                pass
            with _OPEN_LOCK:
                ref = _OPEN.get(self.path)
                if ref is not None and ref() is self:
                    del _OPEN[self.path]
            with self._write_lock:
                self._close_unwritten()
        return self.damaged

    def _load_keys(self) -> None:
        try:
            rows = self.conn.execute("SELECT run_id, run_key FROM run_keys").fetchall()
        except duckdb.CatalogException:  # read-only open of an empty file
            rows = []
        self._keys = {r: int(k) for r, k in rows}

    # -- lifecycle

    def close(self, *, checkpoint: bool = True) -> None:
        """`checkpoint=False`: leave the WAL as it is (a full disk: folding it in would write more; the
        next open replays it)."""
        with _OPEN_LOCK:
            ref = _OPEN.get(self.path)
            if ref is not None and ref() is self:
                del _OPEN[self.path]
        with self._reader_lock:
            if self._reader_root is not None:
                try:
                    self._reader_root.close()
                except duckdb.Error:
                    pass
                self._reader_root = None
        if self.damaged is not None:
            return  # closed unwritten when it was found damaged
        with self._write_lock:
            if not checkpoint:
                self._close_unwritten()
                return
            try:
                self.conn.close()
                if not self.read_only and not self._left_unwritten:  # as left: the next open need not read it all
                    verified_note(self.path).write_text(json.dumps({"identity": _identity(self.path)}) + "\n")
            except OSError:
                pass  # no note: the next open reads every point once more
            except duckdb.Error as exc:  # e.g. the checkpoint at close on a full disk: the WAL keeps it all
                from storage.diskspace import is_disk_full

                if not is_disk_full(exc):
                    raise

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
        """A fresh reader connection for one query context, closed on exit (whatever happened). A read
        that meets a damaged block marks the store damaged (mark_damaged) before the error goes on."""
        cur = self.cursor()
        try:
            yield cur
        except duckdb.Error as exc:
            if is_damage(exc):
                cur.close()
                self.mark_damaged(exc)
            raise
        finally:
            try:
                cur.close()
            except duckdb.Error:
                pass

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
        table = pa.table({"run_key": column(list(rows.values()), np.int32), "run_id": strings(list(rows))})
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
        if self.damaged is not None:
            raise self.damaged
        try:
            return self._ingest(batches)
        except duckdb.Error as exc:
            raise self._classified(exc) from exc

    def _classified(self, exc: duckdb.Error) -> Exception:
        """A write's DuckDB error as what it means: DiskFull, StoreCorrupt (the store then closes
        unwritten), or itself (a bad batch)."""
        from storage.diskspace import DiskFull, is_disk_full

        if is_disk_full(exc):
            return DiskFull(self.path.parent)
        if is_damage(exc):
            return self.mark_damaged(exc)
        return exc

    def _ingest(self, batches: Sequence[PointsBatch]) -> int:
        with self._write_lock:
            conn = self.conn
            if self._keys_stale:
                self._load_keys()
                self._keys_stale = False
            conn.execute("BEGIN TRANSACTION")
            try:
                self._assign_keys(b.run_id for b in batches)
                # drop batches already stored (replay after a crash) and repeats within this call
                keys = [(self._keys[b.run_id], b.attempt, b.seq) for b in batches]
                wanted = pa.table({
                    "run_key": column([k[0] for k in keys], np.int32),
                    "attempt": column([k[1] for k in keys], np.int32),
                    "seq": column([k[2] for k in keys], np.int32),
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
                        "run_key": column([k[0] for k, _ in fresh], np.int32),
                        "attempt": column([k[1] for k, _ in fresh], np.int32),
                        "seq": column([k[2] for k, _ in fresh], np.int32),
                        "n_points": column([len(b.step) for _, b in fresh], np.int32),
                    })
                    conn.register("marks", marks)
                    try:
                        conn.execute("INSERT INTO ingested SELECT * FROM marks")
                    finally:
                        conn.unregister("marks")
                conn.execute("COMMIT")
            except BaseException:
                try:
                    conn.execute("ROLLBACK")
                    self._load_keys()  # keys assigned in the rolled-back transaction are gone
                except duckdb.Error:  # a failed COMMIT ended the transaction (or the database): keep its error
                    self._keys_stale = True  # reloaded before the next ingest, never reused as they are
                raise
        return n

    def ingest_arrays(self, items: Sequence[tuple[str, int, str, list[int], bytes]]) -> int:
        """Store (run_id, attempt, name, shape, float32 bytes) rows not stored before, in ONE transaction
        (storage.run_arrays: a replayed finished event stores nothing twice). Returns the rows new."""
        if self.read_only:
            raise RuntimeError("MetricStore: opened read-only; only the recorder ingests")
        if not items:
            return 0
        if self.damaged is not None:
            raise self.damaged
        try:
            with self._write_lock:
                self.conn.execute("BEGIN TRANSACTION")
                try:
                    self._assign_keys(r[0] for r in items)
                    table = pa.table({
                        "run_key": pa.array([self._keys[r[0]] for r in items], pa.int32()),
                        "attempt": pa.array([r[1] for r in items], pa.int32()),
                        "name": pa.array([r[2] for r in items], pa.string()),
                        "shape": pa.array([r[3] for r in items], pa.list_(pa.int32())),
                        "data": pa.array([r[4] for r in items], pa.binary()),
                    })
                    self.conn.register("incoming_arrays", table)
                    try:
                        before = int(self.conn.execute("SELECT count(*) FROM run_arrays").fetchall()[0][0])
                        self.conn.execute("INSERT INTO run_arrays SELECT * FROM incoming_arrays ON CONFLICT DO NOTHING")
                        n = int(self.conn.execute("SELECT count(*) FROM run_arrays").fetchall()[0][0]) - before
                    finally:
                        self.conn.unregister("incoming_arrays")
                    self.conn.execute("COMMIT")
                except BaseException:
                    try:
                        self.conn.execute("ROLLBACK")
                        self._load_keys()
                    except duckdb.Error:
                        self._keys_stale = True
                    raise
        except duckdb.Error as exc:
            raise self._classified(exc) from exc
        return n

    def run_arrays(self, attempts: Mapping[str, int]) -> dict[str, dict[str, np.ndarray]]:
        """run_id -> {name: float32 array} of the given attempt of each run (storage.queries.run_arrays
        picks each run's shown attempt). Runs without stored arrays are left out."""
        with self.reader() as cur:
            return read_run_arrays(cur, attempts)

    def checkpoint(self) -> None:
        """Fold the WAL into the file (called when a run ends)."""
        if self.read_only:
            return
        if self.damaged is not None:
            raise self.damaged
        with self._write_lock:
            try:
                self.conn.execute("CHECKPOINT")
            except duckdb.TransactionException:
                pass  # a reader's open transaction: the next run's end will checkpoint
            except duckdb.Error as exc:
                error = exc
            else:
                return
        raise self._classified(error) from error

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

    def count_runs_points(self, run_ids: Iterable[str]) -> int:
        """Points of these runs, every attempt (what a purge of them deletes)."""
        keys = list(self.run_keys(run_ids).values())
        if not keys:
            return 0
        with self.reader() as cur:
            return int(cur.execute(_COUNT_RUNS_POINTS, [keys]).fetchall()[0][0])

    def delete_runs(self, run_ids: Iterable[str]) -> int:
        """Delete every attempt's points of these runs, with their summaries, ingested marks and run
        keys, in ONE transaction, then checkpoint so the file itself no longer holds them. Returns the
        points deleted. Only for runs the registry no longer holds (a purge): a later event of such a
        run is refused as unknown, and a run id launched again starts from an empty history."""
        if self.read_only:
            raise RuntimeError("MetricStore: opened read-only; only the recorder deletes")
        if self.damaged is not None:
            raise self.damaged
        keys = list(self.run_keys(run_ids).values())
        if not keys:
            return 0
        try:
            with self._write_lock:
                self.conn.execute("BEGIN TRANSACTION")
                try:
                    n = int(self.conn.execute(_COUNT_RUNS_POINTS, [keys]).fetchall()[0][0])
                    for table in ("points", "summaries", "ingested", "run_arrays", "run_keys"):
                        self.conn.execute(f"DELETE FROM {table} WHERE list_contains(?, run_key)", [keys])
                    self.conn.execute("COMMIT")
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
                finally:
                    self._load_keys()
        except duckdb.Error as exc:
            raise self._classified(exc) from exc
        self.checkpoint()
        return n

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
    metric_arr = pa.DictionaryArray.from_arrays(column(codes, np.int32), strings(names))
    return pa.table({
        "run_key": column(run_key, np.int32), "attempt": column(attempt, np.int32), "seq": column(seq, np.int32),
        "step": column(step, np.int64), "metric": metric_arr, "value": column(value, np.float64),
    })


# Arrow columns from NumPy buffers. pa.array (and pa.table on NumPy columns) imports pandas the first
# time it converts anything, 0.2 s of CPU: in `sweep --wait`'s recorder that ran beside the training.
# Built from buffers, a column is the same Arrow array (no nulls: a NaN value stays a NaN).
_ARROW_TYPES = {np.dtype(np.int32): pa.int32(), np.dtype(np.int64): pa.int64(), np.dtype(np.float64): pa.float64()}


def column(values: Any, dtype: Any) -> pa.Array:
    """An Arrow array of int32, int64 or float64 values (a sequence or a NumPy array)."""
    arr = np.ascontiguousarray(values, dtype=dtype)
    return pa.Array.from_buffers(_ARROW_TYPES[arr.dtype], len(arr), [None, pa.py_buffer(arr)])


def strings(values: Sequence[str]) -> pa.Array:
    """An Arrow string array of these strings."""
    encoded = [v.encode() for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    data = pa.py_buffer(b"".join(encoded))
    return pa.Array.from_buffers(pa.string(), len(encoded), [None, pa.py_buffer(offsets), data])


def read_run_arrays(cur: duckdb.DuckDBPyConnection, attempts: Mapping[str, int]) -> dict[str, dict[str, np.ndarray]]:
    """run_id -> {name: array} of run_arrays at the given attempt of each run, on a reader cursor ({} from a
    store from before the table, opened read-only)."""
    if not attempts:
        return {}
    tables = {r[0] for r in cur.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    if not {"run_arrays", "run_keys"} <= tables:  # checked first: DuckDB would scan a Python object of that name
        return {}
    want = pa.table({"run_id": pa.array(list(attempts), pa.string()),
                     "attempt": pa.array([int(a) for a in attempts.values()], pa.int32())})
    cur.register("want_arrays", want)
    try:
        found = cur.execute(
            "SELECT k.run_id, a.name, a.shape, a.data FROM run_arrays a JOIN run_keys k USING (run_key) "
            "JOIN want_arrays w ON w.run_id = k.run_id AND w.attempt = a.attempt ORDER BY k.run_id, a.name"
        ).fetchall()
    finally:
        try:
            cur.unregister("want_arrays")
        except duckdb.Error:
            pass
    out: dict[str, dict[str, np.ndarray]] = {}
    for run_id, name, shape, data in found:
        out.setdefault(run_id, {})[name] = run_arrays.to_array(list(shape), bytes(data))
    return out


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
