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

    def __init__(self) -> None:
        super().__init__()
        # The formatted second, reused by every record within it (a tuple swap is atomic).
        self._second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        second, text = self._second
        if second != seconds:
            text = time.strftime(_TIME_FORMAT, time.gmtime(seconds))
            self._second = (seconds, text)
        milliseconds = int((record.created - seconds) * 1000)
        line = {
            "time": f"{text}.{milliseconds:03d}Z",
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
    # httpx logs every request's URL at INFO; PocketBase lookups carry a user's email in theirs.
    logging.getLogger("httpx").setLevel(max(level, logging.WARNING))
