"""Structured logs: every record one JSON line on stderr, with the fields a request carries.

Nothing logged here reads headers, bodies or settings, so no key or password reaches a line;
callers pass only the fields they mean to publish (``extra={"fields": {...}}``).
"""

import json
import logging
import sys
import time

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


class JsonFormatter(logging.Formatter):
    """``{"time","level","logger","pid","message", …fields}``, one line per record."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        milliseconds = int((record.created - seconds) * 1000)
        line = {
            "time": f"{time.strftime(_TIME_FORMAT, time.gmtime(seconds))}.{milliseconds:03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _ENCODER.encode(line)


def configure_logging(level: int = logging.INFO) -> None:
    """One JSON handler on the root logger (replacing any), for this process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for previous in list(root.handlers):
        root.removeHandler(previous)
    root.addHandler(handler)
    root.setLevel(level)
