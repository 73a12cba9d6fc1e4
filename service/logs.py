"""Structured logs: every record one JSON line on stderr, with the fields a request carries.

Nothing logged here reads headers, bodies or settings, so no key or password reaches a line;
callers pass only the fields they mean to publish (``extra={"fields": {...}}``).
"""

import atexit
import collections
import json
import logging
import sys
import threading
import time
from json.encoder import encode_basestring_ascii
from typing import TextIO

from api.observe import REQUEST_MESSAGE, RequestLineHandler

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)
# Lines formatted and waiting for the writer; past this a line is dropped and counted, so a
# stalled stderr reader never stalls a request.
LOG_BUFFER_LINES_MAX = 10_000
# How long the writer sleeps between writes: lines reach stderr at most this late.
LOG_FLUSH_INTERVAL_SECONDS = 0.05
# Lines joined into one write; the writer takes the rest at once in further writes.
LOG_WRITE_LINES_MAX = 1_000
LOG_STOP_WAIT_SECONDS = 5.0
# The dropped-lines notice keeps the logger name it has always carried, which log filters match.
DROPPED_NOTICE_LOGGER = "api.logs"


class LineBuffer:
    """Formatted lines waiting for the writer: a deque, appended to without a lock or a wake-up.

    Request threads must not wait on logging: with every thread writing itself they convoyed on
    the handler's lock (check-budget fell to a third of its throughput at 32 connections), and
    with a queue each line woke the writer thread (a context switch per request).
    """

    def __init__(self, lines_max: int = LOG_BUFFER_LINES_MAX) -> None:
        self._lines: collections.deque[str] = collections.deque()
        self._lines_max = lines_max
        self._dropped_lock = threading.Lock()  # taken only when a line is dropped
        self._dropped = 0

    def append(self, line: str) -> None:
        # The length check and the append are not one step: the bound may be passed by at most
        # one line per thread, which keeps it a bound.
        if len(self._lines) < self._lines_max:
            self._lines.append(line)
            return
        with self._dropped_lock:
            self._dropped += 1

    def take(self, lines_max: int) -> list[str]:
        """Up to ``lines_max`` lines in the order they came, and a notice of any dropped since."""
        taken = []
        while len(taken) < lines_max:
            try:
                taken.append(self._lines.popleft())
            except IndexError:
                break
        with self._dropped_lock:
            dropped, self._dropped = self._dropped, 0
        if dropped:
            taken.append(_dropped_notice(dropped))
        return taken

    def __len__(self) -> int:
        return len(self._lines)


def _dropped_notice(count: int) -> str:
    """A warning line in the same shape as every other, made by the same formatter."""
    record = logging.makeLogRecord(
        {
            "name": DROPPED_NOTICE_LOGGER,
            "levelno": logging.WARNING,
            "levelname": "WARNING",
            "msg": "log lines dropped: the buffer was full",
            "fields": {"count": count},
        }
    )
    return JsonFormatter().format(record)


class LineWriter:
    """One thread that wakes every ``LOG_FLUSH_INTERVAL_SECONDS`` and writes what is buffered."""

    def __init__(self, lines: LineBuffer, stream: TextIO | None = None) -> None:
        """Write to ``stream``, or to whatever ``sys.stderr`` is at each write when None."""
        self._lines = lines
        self._stream = stream
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write what is buffered, then end the thread (bounded wait)."""
        self._stopping.set()
        self._thread.join(LOG_STOP_WAIT_SECONDS)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            stopping = self._stopping.wait(LOG_FLUSH_INTERVAL_SECONDS)
            while batch := self._lines.take(LOG_WRITE_LINES_MAX):
                self._write("".join(f"{line}\n" for line in batch))

    def _write(self, text: str) -> None:
        stream = self._stream if self._stream is not None else sys.stderr
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):
            # stderr is closed or broken (the process is ending, or its reader went away):
            # there is nowhere left to report the lines, and the requests must go on.
            pass


class BufferHandler(RequestLineHandler):
    """Formats a record in the thread that logs it and appends the line to a ``LineBuffer``."""

    def __init__(self, lines: LineBuffer) -> None:
        super().__init__()
        self._lines = lines
        self.json_formatter = JsonFormatter()
        self.setFormatter(self.json_formatter)

    def handle(self, record: logging.LogRecord) -> logging.LogRecord | bool:
        """``Handler.handle`` without its lock: formatting is thread-safe and a deque append is
        atomic, and a lock held while formatting is where request threads convoyed. (The lock
        itself stays: Python 3.13's ``Handler.handle`` takes it unconditionally, so a handler
        without one fails, and flushing and closing at exit use it.)"""
        filtered = self.filter(record)
        if filtered:
            self.emit(filtered if isinstance(filtered, logging.LogRecord) else record)
        return filtered

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record))
        except Exception:
            self.handleError(record)

    def write_request(
        self,
        created: float,
        logger_name: str,
        pid: int,
        method: str,
        route: str,
        status: int,
        duration_ms: float,
        request_id: str,
    ) -> None:
        self._lines.append(
            self.json_formatter.request_line(
                created, logger_name, pid, method, route, status, duration_ms, request_id
            )
        )


class JsonFormatter(logging.Formatter):
    """``{"time","level","logger","pid","message", …fields}``, one line per record."""

    def __init__(self) -> None:
        super().__init__()
        # The formatted second, reused by every record within it (a tuple swap is atomic).
        self._second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        exception = self.formatException(record.exc_info) if record.exc_info else None
        return self.line(
            record.created,
            record.levelname,
            record.name,
            record.process,
            record.getMessage(),
            getattr(record, "fields", None),
            exception,
        )

    def line(
        self,
        created: float,
        level_name: str,
        logger_name: str,
        pid: int | None,
        message: str,
        fields: dict | None,
        exception: str | None = None,
    ) -> str:
        """One line from its parts; every record's line is written through here."""
        line = {
            "time": self._time_text(created),
            "level": level_name.lower(),
            "logger": logger_name,
            "pid": pid,
            "message": message,
        }
        if fields:
            line.update(fields)
        if exception is not None:
            line["exception"] = exception
        return _ENCODER.encode(line)

    def request_line(
        self,
        created: float,
        logger_name: str,
        pid: int,
        method: str,
        route: str,
        status: int,
        duration_ms: float,
        request_id: str,
    ) -> str:
        """``line`` of an INFO "request" record with these fields, written by a template.

        The same text (tests hold it to ``line``'s, tricky strings included): strings go
        through the function ``_ENCODER`` writes them with, numbers as ``json`` writes them.
        """
        encode = encode_basestring_ascii
        return (
            f'{{"time":"{self._time_text(created)}","level":"info",'
            f'"logger":{encode(logger_name)},"pid":{pid:d},"message":"{REQUEST_MESSAGE}",'
            f'"method":{encode(method)},"route":{encode(route)},"status":{status:d},'
            f'"duration_ms":{duration_ms!r},"request_id":{encode(request_id)}}}'
        )

    def _time_text(self, created: float) -> str:
        """ISO 8601 UTC with milliseconds; the formatted second is reused within it."""
        seconds = int(created)
        second, text = self._second
        if second != seconds:
            text = time.strftime(_TIME_FORMAT, time.gmtime(seconds))
            self._second = (seconds, text)
        return f"{text}.{int((created - seconds) * 1000):03d}Z"


_writer: LineWriter | None = None


def configure_logging(level: int = logging.INFO) -> None:
    """One JSON handler on the root logger (replacing any), for this process; lines are
    formatted by the thread that logs them and written by one ``LineWriter``."""
    global _writer
    if _writer is not None:
        _writer.stop()
    lines = LineBuffer()
    handler = BufferHandler(lines)
    _writer = LineWriter(lines)
    atexit.register(_writer.stop)  # the lines still buffered are written before exit
    root = logging.getLogger()
    for previous in list(root.handlers):
        root.removeHandler(previous)
    root.addHandler(handler)
    root.setLevel(level)
    # No line names a thread or a process: skip looking them up for every record.
    logging.logThreads = False
    logging.logMultiprocessing = False
    # httpx logs every request's URL at INFO; PocketBase lookups carry a user's email in theirs.
    logging.getLogger("httpx").setLevel(max(level, logging.WARNING))
