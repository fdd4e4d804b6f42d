"""The CLI's error boundary: the project's own errors are one line (exit 2), a bug keeps its traceback;
and the broker comes from the settings object, settings.toml included (issue 14)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import cli
from engine.config import ConfigError
from tasks.spec import SpecError
from tests.conftest import free_port

SPEC = """
name = "errors"
[model]
width = 8
[data]
dataset = "teacher"
input_dim = 4
n_classes = 2
[train]
steps = 10
batch_size = 4
[grid]
gamma = [1.0]
eta = [0.1]
seeds = [0]
"""


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("GAMMA_LAB_BROKER_URL", "GAMMA_LAB_REGISTRY_URL", "GAMMA_LAB_LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GAMMA_LAB_DATA", str(folder))
    return folder


def test_broker_url_in_settings_toml_picks_the_celery_executor(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there: the celery executor refuses in one line
    (data / "settings.toml").write_text(f'broker_url = "{url}"\n')
    spec = data.parent / "spec.toml"
    spec.write_text(SPEC)
    assert cli.main(["sweep", str(spec)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"broker: cannot reach {url} " in err, err
    assert not list((data / "spool").glob("**/*.json"))  # not queued to local workers instead


def test_a_value_error_inside_a_command_keeps_its_traceback(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(args: object) -> int:
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr(cli, "cmd_status", broken)
    with pytest.raises(ValueError, match="a bug, not bad input"):
        cli.main(["status"])


def test_a_spec_error_is_still_one_line_per_problem(data: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    def refused(args: object) -> int:
        raise SpecError([ConfigError("model.width", "must be an integer >= 1 (got -3)")])

    monkeypatch.setattr(cli, "cmd_status", refused)
    assert cli.main(["status"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: 1 problem(s) in the sweep spec; nothing was queued:",
                   "  model.width: must be an integer >= 1 (got -3)"]


def test_a_bad_log_format_setting_is_one_line(data: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GAMMA_LAB_LOG_FORMAT", "yaml")
    assert cli.main(["recorder"]) == cli.EXIT_USAGE
    assert capsys.readouterr().err.strip() == "error: GAMMA_LAB_LOG_FORMAT: one of json, text (got 'yaml')"
