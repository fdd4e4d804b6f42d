"""tasks.worker.run_unit in this process with a recording publisher: event order, seq numbering,
heartbeats, cancel within one log step (flag files), a failing unit publishes `failed`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from storage.bus import validate_event
from storage.settings import load_settings
from tasks import cancel
from tasks.planner import pack
from tasks.spec import SweepSpec
from tasks.worker import run_unit


class Recording:
    def __init__(self, hook: Any = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.hook = hook

    def publish(self, event: dict[str, Any]) -> None:
        validate_event(dict(event))  # every event is one the recorder accepts
        self.events.append(event)
        if self.hook is not None:
            self.hook(event)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


def _unit(steps: int, etas: list[float], data: dict[str, Any] | None = None) -> str:
    spec = SweepSpec.from_dict({
        "model": {"width": 8, "depth": 2}, "data": data or {"dataset": "teacher", "input_dim": 4, "n_classes": 2},
        "train": {"steps": steps, "batch_size": 8, "eval_points": 2, "metrics": ["test"]},
        "grid": {"gamma": [1.0], "eta": etas},
    })
    plan = pack(spec.cells())
    assert plan.n_units == 1
    return plan.units[0].to_json()


def test_events_seq_and_heartbeat(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, heartbeat_s=0.01, lost_after_s=1)
    pub = Recording()
    out = run_unit(_unit(400, [0.01, 1000.0]), settings, pub, flush_every=20)
    assert {e["status"] for e in out} == {"done", "diverged"}
    assert pub.events[0]["type"] == "started" and pub.events[-1]["type"] == "finished"
    for rid in {e["run_id"] for e in pub.of("started")}:
        seqs = [e["seq"] for e in pub.of("points") if e["run_id"] == rid]
        assert seqs == list(range(len(seqs)))  # numbered from 0, no gap, no repeat
        steps = [s for e in pub.of("points") if e["run_id"] == rid for s, m in zip(e["step"], e["metric"],
                                                                                  strict=True) if m == "train_loss"]
        assert len(steps) == len(set(steps))
    assert pub.of("heartbeat"), "no heartbeat from the background thread"


def test_cancel_within_one_log_step(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    unit = _unit(10_000, [0.01, 0.02])
    flagged_at: list[int] = []

    def raise_flag(event: dict[str, Any]) -> None:
        if event["type"] == "points" and not flagged_at and max(event["step"]) >= 100:
            flagged_at.append(max(event["step"]))
            cancel.request(settings, [e["run_id"] for e in pub.of("started")])

    pub = Recording(raise_flag)
    out = run_unit(unit, settings, pub, flush_every=25)
    assert {e["status"] for e in out} == {"cancelled"}
    for e in out:
        assert flagged_at[0] < e["steps_done"] <= flagged_at[0] + 1 + 25  # the next flush at the latest


def test_cancelled_before_start_never_trains(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    unit = _unit(50, [0.01])
    from tasks.planner import WorkUnit

    cancel.request(settings, WorkUnit.from_json(unit).run_ids)
    pub = Recording()
    out = run_unit(unit, settings, pub)
    assert [e["status"] for e in out] == ["cancelled"] and not pub.of("started") and not pub.of("points")
    cancel.clear(settings, WorkUnit.from_json(unit).run_ids)
    assert [e["status"] for e in run_unit(unit, settings, Recording())] == ["done"]


def test_failing_unit_publishes_failed_with_the_error(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    unit = _unit(20, [0.01, 0.1], data={"dataset": "npz", "path": "missing.npz"})
    pub = Recording()
    out = run_unit(unit, settings, pub)
    assert [e["status"] for e in out] == ["failed", "failed"]
    assert all("missing.npz" in (e["error"] or "") for e in out)


def test_a_diverged_run_ends_at_its_flush_not_with_the_unit(tmp_path: Path) -> None:
    # #10 item 7: a diverged run stayed "running" until the whole unit ended. Its `finished` event now
    # comes at the flush where it diverged, after its own last points, before the other run's later
    # points; each run gets exactly one `finished`, and its batch count matches the points it sent.
    settings = load_settings(data_dir=tmp_path)
    pub = Recording()
    out = run_unit(_unit(400, [0.01, 1000.0]), settings, pub, flush_every=20)
    by_status = {e["status"]: e["run_id"] for e in out}
    diverged, done = by_status["diverged"], by_status["done"]
    kinds = [(e["type"], e["run_id"]) for e in pub.events if e["type"] in ("points", "finished")]
    end = kinds.index(("finished", diverged))
    assert ("points", done) in kinds[end + 1:], "the diverged run ended only with the whole unit"
    assert ("points", diverged) not in kinds[end + 1:]
    assert [e["run_id"] for e in pub.of("finished")].count(diverged) == 1
    finished = next(e for e in pub.of("finished") if e["run_id"] == diverged)
    assert finished["batches"] == len([e for e in pub.of("points") if e["run_id"] == diverged])
    assert finished["steps_done"] < 400 and finished["diverged_step"] is not None
