import os
from pathlib import Path

import pytest

from storage.settings import SettingsError, load_settings


def test_precedence_env_over_toml_over_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "d"
    data.mkdir()
    (data / "settings.toml").write_text("heartbeat_s = 5\nlost_after_s = 60\nmax_cells = 7\n")
    monkeypatch.setenv("GAMMA_LAB_DATA", str(data))
    monkeypatch.setenv("GAMMA_LAB_MAX_CELLS", "9")
    monkeypatch.delenv("GAMMA_LAB_BROKER_URL", raising=False)
    s = load_settings()
    assert s.data_dir == data.resolve()
    assert s.heartbeat_s == 5.0 and s.max_cells == 9  # toml, then env wins
    assert s.registry_url == f"sqlite:///{data.resolve() / 'registry.sqlite'}"
    assert s.metrics_path == data.resolve() / "metrics.duckdb" and s.spool_dir == data.resolve() / "spool"
    assert s.broker_url is None and s.embedded
    assert load_settings(max_cells=3).max_cells == 3  # overrides beat env


def test_bad_values_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="heartbeat_s"):
        load_settings(data_dir=tmp_path, heartbeat_s=-1)
    with pytest.raises(SettingsError, match="lost_after_s"):
        load_settings(data_dir=tmp_path, heartbeat_s=10, lost_after_s=11)
    with pytest.raises(SettingsError, match="broker_url"):
        load_settings(data_dir=tmp_path, broker_url="http://x")
    with pytest.raises(SettingsError, match="unknown setting"):
        load_settings(data_dir=tmp_path, colour="red")
    (tmp_path / "settings.toml").write_text("workers = [")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(data_dir=tmp_path)


def test_resolve_data_path_stays_inside(tmp_path: Path) -> None:
    s = load_settings(data_dir=tmp_path / "data")
    s.ensure_dirs()
    (s.data_dir / "sets").mkdir()
    assert s.resolve_data_path("sets/a.npz") == s.data_dir / "sets" / "a.npz"
    for bad in ("/etc/passwd", "../x", "sets/../../x", ""):
        with pytest.raises(SettingsError, match="data.path"):
            s.resolve_data_path(bad)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, s.data_dir / "link")
    with pytest.raises(SettingsError, match="outside the data folder"):
        s.resolve_data_path("link/file.npz")
