"""storage.logs: the JSON lines a lab's workers and recorder write, and when they write them."""

from __future__ import annotations

import io
import json
import logging

import pytest

from storage.logs import JsonFormatter, configure_logging, log_format


def _lines(emit) -> list[dict]:  # type: ignore[no-untyped-def]
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("gamma_lab.test_logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert text.endswith("\n") and all(line.startswith("{") for line in text.splitlines())
    return [json.loads(line) for line in text.splitlines()]


def test_each_record_is_one_json_object_with_its_fields_and_extras() -> None:
    (line,) = _lines(lambda log: log.warning('unit %s said "stop"\nsecond line', "u1", extra={"unit": "u1"}))
    assert line["message"] == 'unit u1 said "stop"\nsecond line'
    assert line["level"] == "WARNING" and line["logger"] == "gamma_lab.test_logs"
    assert line["unit"] == "u1" and isinstance(line["process"], int) and line["host"]
    assert line["time"].endswith("+00:00") and "T" in line["time"]  # ISO-8601, UTC
    assert "exc" not in line


def test_an_exception_goes_inside_the_object() -> None:
    def emit(log: logging.Logger) -> None:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("unit failed", extra={"level": "not this", "host": "not this"})

    (line,) = _lines(emit)
    assert line["level"] == "ERROR" and line["host"] != "not this"  # an extra never hides a field
    assert line["exc"].startswith("Traceback (most recent call last)") and "RuntimeError: boom" in line["exc"]


def test_json_in_lab_mode_text_otherwise_and_the_variable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GAMMA_LAB_LOG_FORMAT", raising=False)
    assert log_format("redis://h:6379/0") == "json" and log_format(None) == "text"
    monkeypatch.setenv("GAMMA_LAB_LOG_FORMAT", "text")
    assert log_format("redis://h:6379/0") == "text"
    monkeypatch.setenv("GAMMA_LAB_LOG_FORMAT", "JSON")
    assert log_format(None) == "json"
    monkeypatch.setenv("GAMMA_LAB_LOG_FORMAT", "yaml")
    with pytest.raises(ValueError, match=r"GAMMA_LAB_LOG_FORMAT: one of json, text \(got 'yaml'\)"):
        log_format(None)


def test_configure_logging_replaces_the_root_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GAMMA_LAB_LOG_FORMAT", raising=False)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        assert configure_logging("redis://h:6379/0", level="INFO") is True
        assert len(root.handlers) == 1 and isinstance(root.handlers[0].formatter, JsonFormatter)
        assert root.level == logging.INFO
        assert configure_logging(None) is False
        assert not isinstance(root.handlers[0].formatter, JsonFormatter) and root.level == logging.INFO
    finally:
        logging.captureWarnings(False)
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


def test_celery_task_lines_are_json_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """Celery gives its task logger a handler and format of its own; in JSON mode it writes JSON."""
    from tasks.celery_app import app

    monkeypatch.delenv("GAMMA_LAB_LOG_FORMAT", raising=False)
    root, task = logging.getLogger(), logging.getLogger("celery.task")
    saved = (root.handlers[:], root.level, task.handlers[:], task.propagate)
    try:
        configure_logging("redis://h:6379/0", level="INFO")
        logger = app.log.setup_task_loggers(loglevel="INFO")
        assert logger.handlers and all(isinstance(h.formatter, JsonFormatter) for h in logger.handlers)
    finally:
        logging.captureWarnings(False)
        root.handlers[:], _, task.handlers[:], task.propagate = saved
        root.setLevel(saved[1])
