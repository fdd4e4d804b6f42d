"""Suite-wide hooks.

Tests that need a system service or program (redis-server, PostgreSQL, Debian's chromium) skip with
the reason on a machine that lacks it. CI sets GAMMA_LAB_REQUIRE_ALL=1: there a skip is a failure,
so a missing install step cannot hide behind a green run.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

REQUIRE_ALL = os.environ.get("GAMMA_LAB_REQUIRE_ALL", "") not in ("", "0", "false")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Generator[None, None, None]:
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, but GAMMA_LAB_REQUIRE_ALL=1 forbids skips here: {reason}"
