"""The JSON log lines: the buffer, the one writer thread, the handler that skips the handler
lock, and the request line written from its fields, byte for byte the line logging writes."""

import io
import json
import logging
import threading

import pytest

from api.observe import log_request
from service.logs import (
    LOG_WRITE_LINES_MAX,
    BufferHandler,
    JsonFormatter,
    LineBuffer,
    LineWriter,
    configure_logging,
)


def test_logging_keeps_httpx_request_urls_out(monkeypatch, process_logging_restored):
    """httpx logs each URL at INFO, and a PocketBase lookup's URL holds the user's email."""
    monkeypatch.setattr(logging.getLogger("httpx"), "level", logging.NOTSET)
    configure_logging()
    assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)


@pytest.fixture
def only_our_handler(monkeypatch) -> LineBuffer:
    """The root logger with nothing but this module's buffer handler, as configure_logging
    leaves it in a server; the buffer is returned to read the lines from."""
    lines = LineBuffer()
    handler = BufferHandler(lines)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [handler])
    monkeypatch.setattr(root, "level", logging.INFO)
    return lines


def test_records_reach_the_buffer_without_waiting_on_the_handler_lock(only_our_handler):
    """Request threads must not convoy on a handler lock; the lock still exists, because
    Python 3.13's ``Handler.handle`` and logging's shutdown take it (without one,
    ``billing serve`` on 3.13 died at its first log line)."""
    handler = logging.getLogger().handlers[0]
    assert handler.lock is not None
    handled = threading.Event()

    def log_elsewhere() -> None:
        logging.getLogger("billing.test").warning("from another thread")
        handled.set()

    with handler.lock:
        other = threading.Thread(target=log_elsewhere)
        other.start()
        assert handled.wait(timeout=10), "the record waited on the handler lock"
    other.join()
    (line,) = only_our_handler.take(10)
    assert json.loads(line)["message"] == "from another thread"


REQUEST_FIELDS = {
    "method": "POST",
    "route": "/api/check-budget",
    "status": 200,
    "duration_ms": 0.5,
    "request_id": "req-1",
}


def test_log_request_writes_the_line_logging_would(only_our_handler):
    """The request line skips logging's LogRecord; it must not differ from one that did not."""
    logger = logging.getLogger("billing.request")
    log_request(logger, *REQUEST_FIELDS.values())
    logger.info("request", extra={"fields": REQUEST_FIELDS})
    direct, through_logging = (json.loads(line) for line in only_our_handler.take(10))
    assert direct.pop("time")[:4] == through_logging.pop("time")[:4]
    assert direct == through_logging
    assert direct["logger"] == "billing.request" and direct["level"] == "info"


@pytest.mark.parametrize(
    ("method", "route", "status", "duration_ms", "request_id"),
    [
        ("POST", "/api/check-budget", 200, 0.123, "0123456789abcdef-1a"),
        ("GET", "/api/users/{user_id}/budget", 404, 12.5, "a.b:c/d+e=f@g-h_i"),
        ('PO"S\\T', "unrouted", 405, 1e-05, "x"),
        ("PATCH", "/api/admin/users/{user_id}", 500, 61234.0, "\u00e9t\u00e9\n"),
        ("DELETE", "/", 201, 3, "-"),
    ],
)
def test_the_request_line_template_writes_the_text_line_writes(
    method, route, status, duration_ms, request_id
):
    """Byte for byte, escapes and number forms included, at the same instant."""
    formatter = JsonFormatter()
    created = 1_795_000_000.0421
    fields = {
        "method": method,
        "route": route,
        "status": status,
        "duration_ms": duration_ms,
        "request_id": request_id,
    }
    generic = formatter.line(created, "INFO", "billing.request", 4321, "request", fields)
    templated = formatter.request_line(
        created, "billing.request", 4321, method, route, status, duration_ms, request_id
    )
    assert templated == generic


def test_log_request_goes_through_logging_when_another_handler_listens(only_our_handler, caplog):
    logger = logging.getLogger("billing.request")
    with caplog.at_level(logging.INFO):
        log_request(logger, *REQUEST_FIELDS.values())
    assert [record.fields for record in caplog.records] == [REQUEST_FIELDS]
    assert len(only_our_handler) == 1  # our handler still got its line, through logging


def test_log_request_below_its_level_writes_nothing(only_our_handler, monkeypatch):
    logger = logging.getLogger("billing.request")
    monkeypatch.setattr(logger, "level", logging.WARNING)
    log_request(logger, *REQUEST_FIELDS.values())
    assert len(only_our_handler) == 0


def test_the_log_writer_writes_every_buffered_line_in_order_before_it_stops():
    """Request threads only append their lines; one writer thread writes them, in batches."""
    lines = LineBuffer()
    stream = io.StringIO()
    writer = LineWriter(lines, stream)
    for number in range(3 * LOG_WRITE_LINES_MAX):
        lines.append(f"line {number}")
    writer.stop()
    assert stream.getvalue().splitlines() == [
        f"line {number}" for number in range(3 * LOG_WRITE_LINES_MAX)
    ]


def test_a_full_log_buffer_drops_lines_and_says_how_many():
    """A stalled stderr must not stall requests: past the bound, lines are counted, not kept."""
    lines = LineBuffer(lines_max=3)
    for number in range(5):
        lines.append(f"line {number}")
    assert len(lines) == 3
    taken = lines.take(10)
    assert taken[:3] == ["line 0", "line 1", "line 2"]
    notice = json.loads(taken[3])
    assert set(notice) >= {"time", "level", "logger", "pid", "message"}
    assert notice["level"] == "warning" and notice["count"] == 2
    assert lines.take(10) == []


def test_a_closed_log_stream_does_not_stop_the_writer():
    """A process whose stderr went away still serves; its lines have nowhere to go."""
    lines = LineBuffer()
    closed = io.StringIO()
    closed.close()
    writer = LineWriter(lines, closed)
    lines.append("lost")
    writer.stop()
    assert not writer._thread.is_alive()
