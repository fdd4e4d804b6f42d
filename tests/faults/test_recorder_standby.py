"""A standalone recorder started while a `gamma-lab` command borrows the metric store (the catch-up of
`rerun` or `status`, a `sweep --wait`) waits for it instead of exiting.

Found in CI: the fault suite spawned `gamma-lab recorder`, then ran `gamma-lab rerun`, whose catch-up
took the store first and drained for longer than the recorder's 10 s lock wait. The recorder exited
with "already running", nothing recorded the rerun's events, and its runs sat queued for ever.
"""

from __future__ import annotations

from pathlib import Path

from storage.recorder import Recorder, read_owner
from storage.settings import load_settings
from tests.faults.conftest import base_env, cli, spawn, stop, wait_for


def test_recorder_stands_by_while_a_command_records_then_takes_over(tmp_path: Path, lab: Path) -> None:
    env = base_env(lab)
    settings = load_settings(data_dir=lab)
    borrowed = Recorder(settings, role="cli")  # what a command's catch-up holds while it drains
    log = tmp_path / "recorder.log"
    proc = spawn(env, ["recorder"], log)
    try:
        wait_for(lambda: "standing by" in log.read_text(errors="replace") or proc.poll() is not None, 60,
                 "the recorder to stand by")
        assert proc.poll() is None, log.read_text(errors="replace")  # it used to exit: "already running"
        # past the 10 s it used to wait before giving up, it still waits
        try:
            proc.wait(12)
        except Exception:  # noqa: BLE001 - still running: what we want
            pass
        assert proc.poll() is None, log.read_text(errors="replace")
        borrowed.close()
        wait_for(lambda: read_owner(settings).role == "recorder", 30, "the standalone recorder to record")
        assert proc.poll() is None
        assert "recording" in log.read_text(errors="replace")
    finally:
        borrowed.close()
        stop(proc)


def test_a_second_standalone_recorder_is_still_refused(tmp_path: Path, lab: Path) -> None:
    env = base_env(lab)
    log = tmp_path / "recorder.log"
    first = spawn(env, ["recorder"], log)
    try:
        wait_for(lambda: "Ctrl-C to stop" in log.read_text(errors="replace"), 60, "the first recorder")
        res = cli(env, "recorder", timeout=60)
        assert res.returncode == 2, res.stderr
        assert "standalone `gamma-lab recorder`" in res.stderr or "already" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
    finally:
        stop(first)
