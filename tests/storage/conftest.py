"""Fixtures for storage tests: a private redis-server, a data folder, the local PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.registry import Registry
from storage.settings import Settings, load_settings

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = load_settings(data_dir=tmp_path / "data", heartbeat_s=1.0, lost_after_s=3.0, workers=1)
    s.ensure_dirs()
    return s


@pytest.fixture
def redis_settings(tmp_path: Path, redis_url: str) -> Settings:
    s = load_settings(data_dir=tmp_path / "data", broker_url=redis_url, heartbeat_s=1.0, lost_after_s=3.0)
    s.ensure_dirs()
    return s


@pytest.fixture
def pg_registry() -> Iterator[Registry]:
    try:
        import psycopg

        psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", connect_timeout=15).close()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 not reachable: {exc}")
    schema = f"gl_test_{uuid.uuid4().hex[:10]}"
    reg = Registry(PG_URL, schema=schema)
    yield reg
    with reg.engine.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    reg.close()


def _make_configs(gammas=(0.1, 1.0), etas=(0.1, 1.0), seeds=(0, 1), depth: int = 3) -> list:
    from engine.config import ModelConfig, RunConfig

    return [RunConfig(model=ModelConfig(width=8, depth=depth), gamma=g, eta=e, seed=s)
            for g in gammas for e in etas for s in seeds]


@pytest.fixture
def make_configs():
    """RunConfigs for a small γ×η×seed grid."""
    return _make_configs
