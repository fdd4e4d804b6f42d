"""Hand-over between recorders: a recorder of role "cli" or "recorder" yields to a dashboard's fresh
request from another live process between two steps; a dashboard never yields; the lock file
names the owner's pid and role."""

from __future__ import annotations

import os
import time

import pytest

from storage.bus import open_publisher
from storage.recorder import (
    HANDOVER_FRESH_S,
    Recorder,
    RecorderBusy,
    pending_request,
    read_owner,
    request_path,
)
from storage.settings import Settings


def _request(settings: Settings, pid: int, at: float | None = None) -> None:
    request_path(settings).write_text(f"{pid} {time.time() if at is None else at}\n")


def _until(ok: object) -> None:
    deadline = time.monotonic() + 30  # only stops a hung test
    while not ok():  # type: ignore[operator]
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_lock_names_pid_and_role(settings: Settings) -> None:
    with Recorder(settings, role="recorder"):
        owner = read_owner(settings)
        assert (owner.pid, owner.role) == (os.getpid(), "recorder")
        assert "gamma-lab recorder" in owner.describe() and f"pid {os.getpid()}" in owner.describe()
    with pytest.raises(ValueError, match="role: must be one of dashboard, cli, recorder"):
        Recorder(settings, role="boss")


def test_cli_recorder_yields_to_a_fresh_request_from_a_live_process(settings: Settings) -> None:
    asker = os.getppid()  # a live process that is not this one (the dashboard's stand-in)
    rec = Recorder(settings, role="cli").start()
    try:
        _request(settings, asker)
        _until(lambda: rec.handed_over_to == asker)
        _until(lambda: not rec.running)
        with pytest.raises(RecorderBusy, match=f"handed over to the dashboard \\(pid {asker}\\)"):
            Recorder(settings, role="cli")  # nobody but the asker takes the free lock meanwhile
        with Recorder(settings, role="dashboard"):  # the lock and the store are free for it
            assert not request_path(settings).exists()  # answered
    finally:
        rec.stop()


def test_stale_dead_or_own_requests_are_ignored_and_a_dashboard_never_yields(settings: Settings) -> None:
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    for pid, at in ((os.getppid(), time.time() - HANDOVER_FRESH_S - 5), (dead, None), (os.getpid(), None)):
        _request(settings, pid, at)
        assert pending_request(settings) is None
    _request(settings, os.getppid())
    dash = Recorder(settings, role="dashboard")  # answers (removes) the request when it takes over
    assert not request_path(settings).exists()
    dash.start()
    try:
        _request(settings, os.getppid())
        pub = open_publisher(settings)
        pub.heartbeat(["no-such-run"], 0, "w")  # set aside: proof that its loop went on past the request
        pub.close()
        _until(lambda: dash.stats["rejected"] == 1)
        assert dash.running and dash.handed_over_to is None
        assert read_owner(settings).pid == os.getpid()
    finally:
        dash.stop()
