"""Structured JSON logs (one object a line) with the reference's field names: level, timestamp, logger, caller."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}

LEVELS = {"": logging.WARNING, "error": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO,
          "debug": logging.DEBUG, "trace": logging.DEBUG, "all": logging.DEBUG}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "level": record.levelname.lower(),
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "logger": record.name,
            "caller": f"{record.module}.py:{record.lineno}",
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key.replace("_", "-")] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def setup(level: str) -> None:
    """Configure the root logger once for a process; `level` uses the reference's names ("" = warnings, plus the
    `startup` logger's lines)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level, logging.WARNING))
    for noisy in ("aiohttp.access", "urllib3", "kubernetes"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # serve's startup lines ("serving on ...", why it is not serving yet) and its hand-off lines (--reuse-port:
    # handed off to a successor, or not) show at the default level too: a webhook that logs nothing until something
    # fails leaves an operator guessing. Only --log-level error hides them.
    for lifecycle in ("startup", "handoff"):
        logging.getLogger(lifecycle).setLevel(min(logging.INFO, root.level) if root.level < logging.ERROR
                                              else logging.ERROR)
