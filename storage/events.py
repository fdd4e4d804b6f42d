"""A run's lifecycle events, one type each: what a worker says on the bus and what the registry applies.

    StartedEvent    a worker began `attempt` of a run
    HeartbeatEvent  a worker is alive and training these runs
    FinishedEvent   the outcome of `attempt` of a run

`wire()` is the JSON object the bus carries (storage.bus validates every incoming one, since a bus
message may come from anywhere); `from_wire()` reads a validated one back. Workers publish through
these types and the recorder hands the same objects to the registry, so each field is named once.
The bus's other events (points, export and purge requests) concern the metric store, not the run
registry, and stay plain objects in storage.bus.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

FINISH_STATUSES = ("done", "diverged", "failed", "cancelled")  # what a finished event may say


@dataclass(frozen=True)
class StartedEvent:
    """A worker began `attempt` of a run."""

    run_id: str
    attempt: int
    worker: str
    time: float

    def wire(self) -> dict[str, Any]:
        return {"type": "started", "run_id": self.run_id, "attempt": self.attempt, "worker": self.worker,
                "time": self.time}

    @classmethod
    def from_wire(cls, ev: Mapping[str, Any]) -> StartedEvent:
        return cls(ev["run_id"], ev["attempt"], ev["worker"], float(ev["time"]))


@dataclass(frozen=True)
class HeartbeatEvent:
    """A worker is alive and training these runs."""

    run_ids: Sequence[str]
    attempt: int
    worker: str
    time: float

    def wire(self) -> dict[str, Any]:
        return {"type": "heartbeat", "run_ids": list(self.run_ids), "attempt": self.attempt,
                "worker": self.worker, "time": self.time}

    @classmethod
    def from_wire(cls, ev: Mapping[str, Any]) -> HeartbeatEvent:
        return cls(list(ev["run_ids"]), ev["attempt"], ev["worker"], float(ev["time"]))


@dataclass(frozen=True)
class FinishedEvent:
    """The outcome of `attempt` of a run; time None = when it is applied.

    `batches` is how many points events the attempt published: the recorder never records `done` for
    a run whose batches did not all reach the store (the registry does not read it)."""

    run_id: str
    attempt: int
    status: str
    steps_done: int | None = None
    diverged_step: int | None = None
    summary: Mapping[str, Any] | None = None
    error: str | None = None
    time: float | None = None
    batches: int | None = None

    def wire(self) -> dict[str, Any]:
        """The bus form: summary values as floats (NaN/inf kept: the bus's JSON carries them); `time`
        and `batches` only when known."""
        ev: dict[str, Any] = {
            "type": "finished", "run_id": self.run_id, "attempt": self.attempt, "status": self.status,
            "steps_done": self.steps_done, "diverged_step": self.diverged_step,
            "summary": {k: float(v) for k, v in (self.summary or {}).items()}, "error": self.error,
        }  # fmt: skip
        if self.time is not None:
            ev["time"] = self.time
        if self.batches is not None:
            ev["batches"] = self.batches
        return ev

    @classmethod
    def from_wire(cls, ev: Mapping[str, Any]) -> FinishedEvent:
        t = ev.get("time")
        return cls(ev["run_id"], ev["attempt"], ev["status"], steps_done=ev.get("steps_done"),
                   diverged_step=ev.get("diverged_step"), summary=ev.get("summary"), error=ev.get("error"),
                   time=float(t) if isinstance(t, int | float) and math.isfinite(t) else None,
                   batches=ev.get("batches"))
