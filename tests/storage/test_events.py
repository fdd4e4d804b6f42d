"""One type per run lifecycle event (storage.events): what a worker publishes is what the bus accepts
and what the recorder hands the registry, field for field."""

from __future__ import annotations

import math

import pytest

from storage.bus import BadEvent, decode, encode, validate_event
from storage.events import FINISH_STATUSES, FinishedEvent, HeartbeatEvent, StartedEvent

EVENTS = [
    StartedEvent("r1", 0, "host:1", 1700000000.5),
    HeartbeatEvent(["r1", "r2"], 2, "host:1", 1700000001.0),
    FinishedEvent("r1", 1, "done", steps_done=100, summary={"final_train_loss": 0.25}, batches=3),
    FinishedEvent("r2", 0, "diverged", steps_done=7, diverged_step=6, summary={"best_train_loss": math.inf}),
    FinishedEvent("r3", 0, "failed", error="RuntimeError: boom", time=1700000002.0),
    FinishedEvent("r4", 4, "cancelled"),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_wire_form_passes_the_bus_and_reads_back_equal(event):
    wire = decode(encode(validate_event(event.wire())))
    back = type(event).from_wire(wire)
    if isinstance(event, FinishedEvent):  # the wire form carries every summary value as a float, {} for none
        assert back == FinishedEvent(**{**event.__dict__, "summary": dict(event.summary or {})})
    else:
        assert back == event


def test_a_finished_event_says_only_what_it_knows():
    wire = FinishedEvent("r", 0, "done").wire()
    assert "time" not in wire and "batches" not in wire
    assert set(FINISH_STATUSES) == {"done", "diverged", "failed", "cancelled"}
    with pytest.raises(BadEvent, match="status"):
        validate_event(FinishedEvent("r", 0, "exploded").wire())
