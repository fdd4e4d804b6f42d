"""Final-function snapshots (storage.run_arrays) from the bus to the store: malformed ones refused, the
spool and Redis both carry them, the recorder stores each (run, attempt, name) once, reads pick the
shown attempt, a purge deletes them, and a store from before the table gains it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from storage import queries, run_arrays
from storage.bus import BadEvent, decode, encode, open_publisher
from storage.metric_store import MetricStore
from storage.recorder import Recorder
from storage.registry import Registry
from storage.settings import Settings


def _arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"output": rng.standard_normal((5, 3)).astype(np.float32),
            "gram": rng.standard_normal((5, 5)).astype(np.float32)}


def _finished(run_id: str, attempt: int, arrays: dict[str, np.ndarray] | None) -> dict:
    """A finished event as tasks.worker publishes it."""
    ev = {"type": "finished", "run_id": run_id, "attempt": attempt, "status": "done", "steps_done": 4,
          "diverged_step": None, "summary": {}, "error": None, "batches": 1}
    return ev | {"arrays": run_arrays.encode(arrays)} if arrays else ev


def _rows(settings: Settings) -> int:
    with MetricStore(settings.metrics_path, read_only=True) as store, store.reader() as cur:
        return int(cur.execute("SELECT count(*) FROM run_arrays").fetchall()[0][0])


def test_round_trip_and_malformed_arrays_are_refused() -> None:
    arrays = _arrays(0)
    ev = decode(encode(_finished("r", 0, arrays)))
    got = run_arrays.decode(ev["arrays"])
    assert set(got) == {"output", "gram"}
    for name, a in arrays.items():
        assert got[name].dtype == np.float32 and np.array_equal(got[name], a)
    good = run_arrays.encode({"gram": arrays["gram"]})["gram"]
    bad = {
        "shape": {"gram": good | {"shape": [5, 4]}},  # 25 floats of data for 20
        "length": {"gram": good | {"data": good["data"][:-8]}},
        "base64": {"gram": good | {"data": "not base64!"}},
        "negative": {"gram": good | {"shape": [-5, -5]}},
        "name": {"a b": good},
        "fields": {"gram": good | {"dtype": "float64"}},
        "huge": {"gram": {"shape": [1 << 12, 1 << 12], "data": ""}},
        "kind": ["gram"],
    }
    for why, value in bad.items():
        with pytest.raises(BadEvent, match="^arrays: "):
            decode(encode(_finished("r", 0, None) | {"arrays": value}))
        assert why


def _publish_and_record(settings: Settings, make_configs) -> list[str]:
    configs = make_configs(gammas=(1.0,), etas=(0.1,), seeds=(0, 1))
    ids = [c.run_id for c in configs]
    with Registry(settings.registry_url) as reg:
        reg.add_runs(reg.create_sweep("s", "alice", {}), configs)
    with open_publisher(settings) as pub:
        for k, rid in enumerate(ids):
            pub.started(rid, 0, "w")
            pub.points(rid, 0, np.arange(4), ["train_loss"] * 4, np.linspace(1, 0, 4))
            pub.publish(_finished(rid, 0, _arrays(k)))
            pub.publish(_finished(rid, 0, _arrays(k)))  # a replayed event: stored once
    with Recorder(settings) as rec:
        rec.drain()
        assert rec.stats["rejected"] == 0
    return ids


@pytest.mark.parametrize("bus", ["spool", "redis"])
def test_the_bus_carries_arrays_and_the_recorder_stores_them_once(bus: str, request: pytest.FixtureRequest,
                                                                  make_configs) -> None:
    settings = request.getfixturevalue("settings" if bus == "spool" else "redis_settings")
    ids = _publish_and_record(settings, make_configs)
    assert _rows(settings) == 4  # 2 runs × 2 names, the replay added nothing
    got = queries.run_arrays(settings, ids)
    for k, rid in enumerate(ids):
        for name, a in _arrays(k).items():
            assert np.array_equal(got[rid][name], a)
    with Registry(settings.registry_url) as reg:
        assert {r["status"] for r in reg.get_runs(ids)} == {"done"}


def test_reads_follow_the_shown_attempt_and_a_purge_deletes_them(settings: Settings, make_configs) -> None:
    ids = _publish_and_record(settings, make_configs)
    with Registry(settings.registry_url) as reg:
        assert reg.reset_for_rerun([ids[0]]) == {ids[0]: 1}
    with open_publisher(settings) as pub:
        pub.started(ids[0], 1, "w")
    with Recorder(settings) as rec:
        rec.drain()
    assert np.array_equal(queries.run_arrays(settings, ids)[ids[0]]["gram"], _arrays(0)["gram"])  # rerun running
    with open_publisher(settings) as pub:
        pub.points(ids[0], 1, np.arange(4), ["train_loss"] * 4, np.linspace(1, 0, 4))
        pub.publish(_finished(ids[0], 1, _arrays(7)))
    with Recorder(settings) as rec:
        rec.drain()
    got = queries.run_arrays(settings, ids)
    assert np.array_equal(got[ids[0]]["gram"], _arrays(7)["gram"])  # the new result is shown
    assert np.array_equal(got[ids[1]]["gram"], _arrays(1)["gram"])
    with MetricStore(settings.metrics_path) as store:
        assert set(store.run_arrays({ids[0]: 0})[ids[0]]) == {"output", "gram"}  # older attempts stay stored
        store.delete_runs([ids[0]])
        assert store.run_arrays({ids[0]: 0, ids[0] + "x": 0}) == {}
        assert set(store.run_arrays({ids[1]: 0})) == {ids[1]}
    assert _rows(settings) == 2


def test_a_store_from_before_the_table_reads_empty_then_gains_it(tmp_path: Path) -> None:
    path = tmp_path / "metrics.duckdb"
    with MetricStore(path) as store:
        store.conn.execute("DROP TABLE run_arrays")
    with MetricStore(path, read_only=True) as store:
        assert store.run_arrays({"r": 0}) == {}
    with MetricStore(path) as store:
        assert store.ingest_arrays([("r", 0, "gram", [2, 2], np.eye(2, dtype="<f4").tobytes())]) == 1
        assert store.ingest_arrays([("r", 0, "gram", [2, 2], np.eye(2, dtype="<f4").tobytes())]) == 0
        assert np.array_equal(store.run_arrays({"r": 0})["r"]["gram"], np.eye(2))
