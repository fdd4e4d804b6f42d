"""`sweep --wait` notices the end as soon as its recorder stored it (app.cli_wait.nap), not at the next
fixed 0.5 s poll (issue 13 item 5). No timed assertion: the nap's wake-ups are counted."""

from __future__ import annotations

import threading

import pytest

from app import cli_wait


class Recorder:
    def __init__(self) -> None:
        self.stats = {"events": 0}


@pytest.fixture()
def sleeps(monkeypatch):
    """Replace time.sleep in cli_wait: record each nap slice; `on_sleep` runs after each."""
    calls: list[float] = []
    hooks: list = []

    def fake_sleep(s: float) -> None:
        calls.append(s)
        for hook in hooks:
            hook(len(calls))

    clock = {"t": 0.0}
    monkeypatch.setattr(cli_wait.time, "sleep", lambda s: (clock.__setitem__("t", clock["t"] + s), fake_sleep(s)))
    monkeypatch.setattr(cli_wait.time, "monotonic", lambda: clock["t"])
    return calls, hooks


def test_the_nap_ends_once_the_recorder_stored_new_events(sleeps):
    calls, hooks = sleeps
    rec = Recorder()
    hooks.append(lambda n: rec.stats.__setitem__("events", 36) if n == 2 else None)  # the runs' ends arrive
    cli_wait.nap(rec, 0.5)
    assert len(calls) == 2 and sum(calls) < 0.5


def test_without_news_or_a_recorder_the_nap_lasts_the_poll(sleeps):
    calls, _ = sleeps
    cli_wait.nap(Recorder(), 0.5)
    assert sum(calls) == pytest.approx(0.5)
    calls.clear()
    cli_wait.nap(None, 0.5)  # another process records: nothing to watch here
    assert sum(calls) == pytest.approx(0.5)


def test_nap_is_safe_beside_a_recording_thread():
    rec = Recorder()
    timer = threading.Timer(0.01, lambda: rec.stats.__setitem__("events", 1))
    timer.start()
    cli_wait.nap(rec, 5.0)  # returns after the counter moved (the test would hang for 5 s otherwise)
    timer.join()
    assert rec.stats["events"] == 1
