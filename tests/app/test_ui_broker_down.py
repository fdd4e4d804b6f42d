"""A lab dashboard whose broker is down when it starts (or goes down later) still shows every page from
the registry and says in the sidebar why it does not record (take_over_if_free tries again every few
seconds, so it records once the broker answers).
Found while testing the Workers page: resources() raised redis' ConnectionError, so every page was a
traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.ui import Resources, not_recording_note
from storage.recorder import RecorderBusy
from storage.registry import Registry
from storage.settings import load_settings
from tests.conftest import free_port

MAIN = str(Path(__file__).resolve().parents[2] / "app" / "main.py")


def test_pages_render_from_the_registry_with_the_broker_down(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import streamlit as st

    data = tmp_path / "data"
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    settings = load_settings(data_dir=data, broker_url=url)
    settings.ensure_dirs()
    with Registry(settings.registry_url) as reg:
        reg.create_sweep("while-redis-is-down", "alice", {"model": {"width": 8}})
    monkeypatch.setenv("GAMMA_LAB_DATA", str(data))
    monkeypatch.setenv("GAMMA_LAB_BROKER_URL", url)
    monkeypatch.setenv("GAMMA_LAB_AUTH", "none")
    st.cache_resource.clear()
    at = AppTest.from_file(MAIN, default_timeout=60).run()
    assert not at.exception, at.exception
    for page in ("runs", "workers"):
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception, (page, at.exception)
    sidebar = "\n".join(c.value for c in at.sidebar.caption)
    assert "not recording now (ConnectionError" in sidebar, sidebar
    from app.ui import shutdown

    shutdown()


def test_take_over_says_why_and_keeps_trying(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    settings = load_settings(data_dir=tmp_path / "data", broker_url=url)
    res = Resources(settings=settings, source=None, recorder=None, recorder_note="")
    assert not res.take_over_if_free(every_s=0.0)  # no exception: the page goes on
    assert res.recorder_note.startswith("not recording now (ConnectionError"), res.recorder_note
    assert not res.take_over_if_free(every_s=0.0)


@pytest.mark.parametrize(
    ("exc", "start"),
    [(RecorderBusy("the standalone recorder (pid 7)"), "another process records (the standalone"),
     (ConnectionError("Error 111 connecting"), "not recording now (ConnectionError: Error 111")],
)
def test_the_note_names_the_cause(exc: Exception, start: str) -> None:
    assert not_recording_note(exc).startswith(start)
