"""Log lines for long-running processes: one JSON object per line in lab mode, plain text otherwise.

A lab runs workers and a recorder on several machines for weeks; their logs go to a collector
(journald, Docker, Loki) that parses JSON lines, so a line must not span several lines (a traceback
goes inside the object) and must say where it came from (host, process). On a laptop (embedded
mode) people read the text themselves.

`GAMMA_LAB_LOG_FORMAT=json|text` overrides the choice; otherwise JSON exactly when a broker is set.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from datetime import UTC, datetime
from typing import Any

from storage.settings import SettingsError

FORMATS = ("json", "text")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
HOST = socket.gethostname()
# what every LogRecord carries: anything else on a record came from `extra=` and is written too
_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (ISO-8601, UTC), level, logger, message, process, host, `exc`
    (the traceback text) when there is one, and the fields passed with `extra=`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "host": HOST,
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                out.setdefault(key, value)  # an extra never hides a field above
        return json.dumps(out, default=str, ensure_ascii=False)


def log_format(broker_url: str | None) -> str:
    """"json" or "text": GAMMA_LAB_LOG_FORMAT when set, else JSON in lab mode (a broker is set)."""
    chosen = os.environ.get("GAMMA_LAB_LOG_FORMAT", "").strip().lower()
    if chosen and chosen not in FORMATS:
        raise SettingsError("GAMMA_LAB_LOG_FORMAT", f"one of {', '.join(FORMATS)} (got {chosen!r})")
    return chosen or ("json" if broker_url else "text")


def configure_logging(broker_url: str | None, *, level: int | str | None = None) -> bool:
    """Send this process's log records to stderr, as JSON lines or as TEXT_FORMAT (log_format).
    Replaces the root logger's handlers; keeps its level unless `level` is given. Returns whether
    the lines are JSON (a Celery worker then drops its text banner)."""
    as_json = log_format(broker_url) == "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(handlers=[handler], force=True, level=level)  # None keeps the level
    if as_json:  # a warning (Celery's about running as root) is a record too, not lines of text
        logging.captureWarnings(True)
    return as_json


def match_root_format(logger: logging.Logger) -> None:
    """Give `logger`'s own handlers the root handler's JSON formatter, when the root writes JSON:
    Celery sets up its task and multiprocessing loggers with handlers and formats of its own."""
    root = logging.getLogger().handlers
    if root and isinstance(root[0].formatter, JsonFormatter):
        for handler in logger.handlers:
            handler.setFormatter(JsonFormatter())
