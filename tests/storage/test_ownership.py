"""storage.ownership.pid_alive, the one liveness check of a pid (the recorder's owner, a hand-over
asker, a local worker, an adaptive driver): a zombie is dead."""

from __future__ import annotations

import os
import subprocess
import sys

from storage.ownership import pid_alive


def test_an_exited_child_not_yet_reaped_is_not_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # it exited; left a zombie until reaped
        assert not pid_alive(child.pid)
    finally:
        child.wait()


def test_this_process_is_alive() -> None:
    assert pid_alive(os.getpid())
