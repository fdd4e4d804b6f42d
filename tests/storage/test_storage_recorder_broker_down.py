"""A recorder that cannot reach its broker must leave the metric file and its lock free again."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from storage.recorder import Recorder
from storage.settings import load_settings


def test_recorder_whose_broker_is_down_releases_the_store_and_lock(tmp_path: Path) -> None:
    # The dashboard retries taking over recording; while Redis was down each try left the DuckDB
    # file open and the owner lock held, so once Redis was back it said "another process records"
    # for ever (the process was blocking itself).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = load_settings(data_dir=str(tmp_path), broker_url=f"redis://127.0.0.1:{port}/0")
    with pytest.raises(RedisConnectionError):
        Recorder(down, lock_wait_s=0.5)
    with Recorder(load_settings(data_dir=str(tmp_path)), lock_wait_s=0.5) as recorder:
        recorder.drain(timeout_s=1)
