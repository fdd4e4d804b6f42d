"""Fixtures shared by the queue tests."""

import subprocess
import sys

import pytest


@pytest.fixture
def parent() -> subprocess.Popen[bytes]:
    """A stand-in for the process whose local workers these are (the dashboard for warm workers, the
    `gamma-lab sweep` for an early one): they leave when it is gone."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    yield proc
    proc.kill()
    proc.wait()
