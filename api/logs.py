"""Structured logs: every record one JSON line on stderr, with the fields a request carries.

Nothing logged here reads headers, bodies or settings, so no key or password reaches a line;
callers pass only the fields they mean to publish (``extra={"fields": {...}}``).
"""

import atexit
import json
import logging
import logging.handlers
import queue
import sys
import threading
import time
from typing import TextIO

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)
# Lines formatted and waiting for the writer thread; a request waits when it is full.
LOG_QUEUE_RECORDS_MAX = 10_000
# Lines the writer joins into one write; each write lets the other threads take the GIL.
LOG_WRITE_LINES_MAX = 256
LOG_STOP_WAIT_SECONDS = 5.0


class LineWriter:
    """One thread that writes the queued lines to a stream, all that are waiting in one write.

    Request threads only format their line and queue it. With every thread writing itself,
    16 request threads queued on the handler's lock behind each write (a convoy: check-budget
    fell to a third of its throughput at 32 connections).
    """

    _STOP = object()

    def __init__(self, lines: "queue.Queue[object]", stream: TextIO | None = None) -> None:
        """Write to ``stream``, or to whatever ``sys.stderr`` is at each write when None."""
        self._lines = lines
        self._stream = stream
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write what is queued, then end the thread (bounded wait)."""
        self._lines.put(self._STOP)
        self._thread.join(LOG_STOP_WAIT_SECONDS)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._lines.get()]
            while len(batch) < LOG_WRITE_LINES_MAX:
                try:
                    batch.append(self._lines.get_nowait())
                except queue.Empty:
                    break
            if self._STOP in batch:
                stopping = True
                batch = [item for item in batch if item is not self._STOP]
            if batch:
                self._write("".join(f"{record.getMessage()}\n" for record in batch))

    def _write(self, text: str) -> None:
        stream = self._stream if self._stream is not None else sys.stderr
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):
            # stderr is closed or broken (the process is ending, or its reader went away):
            # there is nowhere left to report the lines, and the requests must go on.
            pass


_writer: LineWriter | None = None


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
    """One JSON handler on the root logger (replacing any), for this process; lines are
    formatted by the thread that logs them and written by one ``LineWriter``."""
    global _writer
    if _writer is not None:
        _writer.stop()
    lines: queue.Queue[object] = queue.Queue(LOG_QUEUE_RECORDS_MAX)
    handler = logging.handlers.QueueHandler(lines)
    handler.setFormatter(JsonFormatter())
    _writer = LineWriter(lines)
    atexit.register(_writer.stop)  # the lines still queued are written before exit
    root = logging.getLogger()
    for previous in list(root.handlers):
        root.removeHandler(previous)
    root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request's URL at INFO; PocketBase lookups carry a user's email in theirs.
    logging.getLogger("httpx").setLevel(max(level, logging.WARNING))
