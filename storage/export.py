"""Export stored points to Parquet, also while another process owns the DuckDB file.

DuckDB allows one read-write process per file and no reader beside it ("Could not set lock on file"),
so a CLI export fails while the dashboard's recorder records. `export_points` therefore reads the
file directly when it can (this process's own store, or a read-only open when nobody records), and
otherwise asks the owner: it publishes an `export` event on the bus
(`{"type": "export", "request_id", "run_ids" | "sweep_id", "path"}`, path relative to the data
folder) and the recorder answers by writing the Parquet file under a temporary name and renaming it
into place (atomic: a reader never sees half a file), or `<path>.error` with the reason.

The file holds the shown attempt of each run (its newest attempt that finished done or diverged,
else its current one: storage.registry.VIEW_COLUMNS; a cancelled rerun never hides a result):
columns run_id, step, metric, value, ordered by run_id, metric, step (the same rows `gamma-lab export
--series` wrote before).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage.bus import open_publisher
from storage.metric_store import MetricStore, StoreLocked, open_reader, read_run_arrays
from storage.registry import Registry, RegistryError, runs_columns
from storage.settings import Settings

EXPORT_DIR = "exports"  # inside the data folder: where the recorder writes answers to export requests
_COLUMNS = pa.schema([("run_id", pa.string()), ("step", pa.int64()), ("metric", pa.string()),
                      ("value", pa.float64())])
_SELECT = ("SELECT k.run_id, p.step, p.metric, p.value FROM points p "
           "JOIN run_keys k ON p.run_key = k.run_key "
           "JOIN export_runs w ON w.run_id = k.run_id AND w.attempt = p.attempt "
           "ORDER BY k.run_id, p.metric, p.step")


class ExportError(RuntimeError):
    """The export could not be written (unknown sweep, no recorder answering, ...); says why."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    rows: int
    via: str  # "direct" (read the DuckDB file here) | "recorder" (written by the owning recorder)


def resolve_runs(registry: Registry, *, run_ids: Sequence[str] | None = None,
                 sweep_id: str | None = None) -> pa.Table:
    """(run_id, attempt) of the named runs or of a sweep's runs, shown attempts (ExportError if unknown)."""
    if (run_ids is None) == (sweep_id is None):
        raise ExportError("export: give exactly one of run_ids or sweep_id")
    if sweep_id is not None:
        if registry.get_sweep(sweep_id) is None:
            raise ExportError(f"sweep_id: no sweep {sweep_id!r}")
        cols = runs_columns(registry, sweep_id=sweep_id, fields=("run_id", "shown_attempt"))
    else:
        cols = runs_columns(registry, run_ids=list(run_ids or []), fields=("run_id", "shown_attempt"))
        unknown = sorted(set(run_ids or []) - set(cols["run_id"]))
        if unknown:
            raise ExportError(f"run_ids: no run {unknown[0]!r} in the registry")
    return pa.table({"run_id": pa.array(cols["run_id"], pa.string()),
                     "attempt": pa.array(cols["shown_attempt"], pa.int32())})


def write_points(store: MetricStore | None, wanted: pa.Table, dest: Path) -> int:
    """Write the points of `wanted` (run_id, attempt) to `dest` as Parquet, atomically (temporary name
    in the same folder, then os.replace). Returns the number of rows."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if store is None or wanted.num_rows == 0:
            pq.write_table(_COLUMNS.empty_table(), tmp)
            rows = 0
        else:
            with store.reader() as cur:
                cur.register("export_runs", wanted)
                # COPY streams the result to the file (no 10M-row table in Python memory). The target
                # cannot be a bound parameter: it is our own temporary name, quotes doubled.
                target = str(tmp).replace("'", "''")
                out = cur.execute(f"COPY ({_SELECT}) TO '{target}' (FORMAT PARQUET)").fetchall()
                rows = int(out[0][0]) if out else pq.read_metadata(tmp).num_rows
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return rows


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def answer_request(settings: Settings, store: MetricStore, registry: Registry, event: dict) -> None:
    """The recorder's side: write the file an `export` event asks for, or `<path>.error` with why.
    Raises SettingsError (a ValueError) for a path outside the data folder: that event is set aside."""
    dest = settings.resolve_data_path(event["path"])
    error = dest.with_name(dest.name + ".error")
    try:
        wanted = resolve_runs(registry, run_ids=event.get("run_ids"), sweep_id=event.get("sweep_id"))
        if event.get("what") == "arrays":
            write_arrays(store, wanted, dest)
        else:
            write_points(store, wanted, dest)
    except (ExportError, RegistryError) as exc:
        _write_text_atomic(error, str(exc))
    except Exception as exc:  # noqa: BLE001 - the requester must hear about it, the recorder goes on
        _write_text_atomic(error, f"{type(exc).__name__}: {exc}")


@contextmanager
def _direct_reader(settings: Settings) -> Iterator[tuple[bool, MetricStore | None]]:
    """(True, the store or None when there is no file yet) when this process can read the metrics file
    itself (its own recorder's store, or a read-only open when nobody records); (False, None) when
    another process's recorder holds it. A store opened here is closed on exit."""
    try:
        store, owned = open_reader(settings.metrics_path)
    except StoreLocked:
        yield False, None
        return
    try:
        yield True, store
    finally:
        if owned and store is not None:
            store.close()


def export_points(settings: Settings, run_ids: Sequence[str] | None, out_path: str | Path,
                  timeout_s: float = 120.0, *, sweep_id: str | None = None) -> ExportResult:
    """Write the points of `run_ids` (or of the sweep `sweep_id`; pass run_ids=None) to `out_path`
    (Parquet; shown attempts; columns run_id, step, metric, value).

    Reads the DuckDB file directly when this process can (it runs the recorder, or nobody does);
    when another process's recorder holds it, asks that recorder over the bus and waits up to
    `timeout_s` for its answer. Raises ExportError with the reason (unknown runs, recorder not
    answering)."""
    out = Path(out_path)
    if timeout_s <= 0:
        raise ExportError(f"timeout_s: must be > 0 (got {timeout_s!r})")
    with Registry(settings.registry_url) as registry:
        wanted = resolve_runs(registry, run_ids=run_ids, sweep_id=sweep_id)  # bad ids fail here, quickly
        with _direct_reader(settings) as (readable, store):
            if readable:
                return ExportResult(out, write_points(store, wanted, out), "direct")
    _through_recorder(settings, {"run_ids": None if run_ids is None else list(run_ids), "sweep_id": sweep_id},
                      out, timeout_s)
    return ExportResult(out, pq.read_metadata(out).num_rows, "recorder")


def export_arrays(
    settings: Settings, run_ids: Sequence[str], timeout_s: float = 120.0
) -> dict[str, dict[str, np.ndarray]]:
    """run_id -> {name: float32 array}: the final-function snapshots (storage.run_arrays) of the runs'
    shown attempts, read as export_points reads points: directly when this process can, else through
    the recorder that holds the file (an `export` event with `"what": "arrays"`, answered in an .npz
    file). Runs without a snapshot are left out."""
    with Registry(settings.registry_url) as registry:
        wanted = resolve_runs(registry, run_ids=list(run_ids))
        with _direct_reader(settings) as (readable, store):
            if readable:
                return _read_arrays(store, wanted)
    with tempfile.TemporaryDirectory(prefix="gamma-lab-arrays-") as folder:
        out = Path(folder) / "arrays.npz"
        _through_recorder(settings, {"run_ids": list(run_ids), "what": "arrays"}, out, timeout_s)
        with np.load(out, allow_pickle=False) as npz:  # never unpickle: plain float32 arrays only
            found: dict[str, dict[str, np.ndarray]] = {}
            for key in npz.files:
                run_id, name = key.split("/", 1)
                found.setdefault(run_id, {})[name] = npz[key]
        return found


def _read_arrays(store: MetricStore | None, wanted: pa.Table) -> dict[str, dict[str, np.ndarray]]:
    if store is None:
        return {}
    with store.reader() as cur:
        return read_run_arrays(cur, dict(zip(wanted["run_id"].to_pylist(), wanted["attempt"].to_pylist(),
                                             strict=True)))


def write_arrays(store: MetricStore | None, wanted: pa.Table, dest: Path) -> int:
    """Write the snapshots of `wanted` (run_id, attempt) to `dest` (.npz, keys 'run_id/name'),
    atomically. Returns the number of arrays."""
    found = _read_arrays(store, wanted)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        payload: dict[str, Any] = {f"{rid}/{name}": a for rid, arrays in found.items() for name, a in arrays.items()}
        with open(tmp, "wb") as f:
            np.savez(f, **payload)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return sum(len(a) for a in found.values())


def _through_recorder(settings: Settings, ask: dict[str, Any], out: Path, timeout_s: float) -> None:
    """Ask the recorder holding the metrics file to write an export (`ask`: run_ids or sweep_id, and
    `what`), wait for its answer and move it to `out`; ExportError with the reason."""
    request_id = uuid.uuid4().hex
    suffix = "npz" if ask.get("what") == "arrays" else "parquet"
    rel = f"{EXPORT_DIR}/{request_id}.{suffix}"
    dest = settings.resolve_data_path(rel)
    error = dest.with_name(dest.name + ".error")
    event: dict[str, Any] = {"type": "export", "request_id": request_id, "path": rel,
                             **{k: v for k, v in ask.items() if v is not None}}
    with open_publisher(settings) as pub:
        pub.publish(event)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if dest.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(dest), str(out))
            return
        if error.exists():
            reason = error.read_text()
            error.unlink(missing_ok=True)
            raise ExportError(f"export: the recorder could not write it: {reason}")
        time.sleep(0.05)
    raise ExportError(
        f"export: the metrics file {settings.metrics_path} is held by another process and no recorder "
        f"answered within {timeout_s:g} s (is `gamma-lab recorder` or the dashboard running?)")
