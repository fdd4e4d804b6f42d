"""Suite-wide hooks.

Tests that need a system service or program (redis-server, PostgreSQL, Debian's chromium) skip with
the reason on a machine that lacks it. CI sets GAMMA_LAB_REQUIRE_ALL=1: there a skip is a failure,
so a missing install step cannot hide behind a green run. The one exception is a test marked `gpu`:
no install step gives a CPU machine a CUDA device (bench/device_check.sh runs those where one is lent).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

REQUIRE_ALL = os.environ.get("GAMMA_LAB_REQUIRE_ALL", "") not in ("", "0", "false")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Generator[None, None, None]:
    outcome = yield
    report = outcome.get_result()
    # a GPU-only test (marker gpu) cannot run on a CPU machine: its skip is no missing install step
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail") and "gpu" not in item.keywords:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, but GAMMA_LAB_REQUIRE_ALL=1 forbids skips here: {reason}"


@pytest.fixture(autouse=True)
def _stop_dashboard_recorders() -> Iterator[None]:
    """A dashboard's resources (and its recorder thread) are cached per process: after a test that
    rendered pages, stop them, or the thread outlives the test's data folder and Redis server."""
    yield
    import sys

    ui = sys.modules.get("app.ui")
    if ui is not None:
        ui.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Our own redis-server on a free port (never the shared 6379), no persistence."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path_factory.mktemp("redis"))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(f"redis-server did not answer on port {port}")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The private Redis, emptied for this test."""
    import redis

    redis.Redis.from_url(redis_server).flushall()
    return redis_server


PG = "postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A registry URL for a process a test starts (GAMMA_LAB_REGISTRY_URL): an SQLite file in
    tmp_path/data, then a schema of its own on the local PostgreSQL server (dropped afterwards), so
    the same test runs on both backends."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'registry.sqlite'}"
        return
    import uuid

    try:
        import psycopg

        conn = psycopg.connect(f"postgresql://{PG}", connect_timeout=15, autocommit=True)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 not reachable: {exc}")
    schema = f"gl_test_{uuid.uuid4().hex[:10]}"
    conn.execute(f'CREATE SCHEMA "{schema}"')
    try:  # libpq's options put every connection of that process in this schema
        yield f"postgresql+psycopg://{PG}?options=-csearch_path%3D{schema}"
    finally:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        conn.close()
