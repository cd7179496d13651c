"""Log lines for people (text) or for log pipelines (JSON), the same for workers and gateway.

`configure` gives the root logger one handler in the chosen format; the package's own
logger gets a `NullHandler` on import (``micromessaging/__init__``), so that a library user
who configures nothing sees no "no handler" warnings and no lines they didn't ask for.
JSON lines carry the time, level, logger, message, process id, and every ``extra`` field a
call passed (per-call lines: queue, method, id, wait, duration, outcome).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure(level: str = "info", fmt: str = "text") -> None:
    """Send every log line to stderr, at `level`, as text or JSON lines (`fmt`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
