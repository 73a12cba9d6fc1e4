"""Faults stay quiet: repeated failures are logged as one line per kind with a count
(``core.store.base.FailureLog``)."""

import logging
from collections.abc import Iterator

import pytest

from core.store.base import FAILURE_KINDS_MAX, FAILURE_LOG_INTERVAL_MS, OTHER_FAILURES, FailureLog


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def said(self) -> list[tuple[str, dict]]:
        return [(record.getMessage(), record.fields) for record in self.records]


class Clock:
    def __init__(self) -> None:
        self.now_ms = 1_000_000

    def __call__(self) -> int:
        return self.now_ms


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("tests.hostile.failures")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def failure_log(clock: Clock) -> FailureLog:
    return FailureLog(logging.getLogger("tests.hostile.failures"), "write failed", clock)


def test_repeated_failures_are_one_line_per_kind_per_interval_with_their_count(
    lines: Lines,
) -> None:
    clock = Clock()
    failures = failure_log(clock)
    for _ in range(1_000):
        failures.failed("disk full")
    failures.failed("disk I/O error")
    assert lines.said() == [
        ("write failed: disk full", {"failures": 1}),
        ("write failed: disk I/O error", {"failures": 1}),
    ]
    clock.now_ms += FAILURE_LOG_INTERVAL_MS - 1
    failures.report_due()
    failures.failed("disk full")
    assert len(lines.records) == 2
    clock.now_ms += 1
    failures.failed("disk full")
    assert lines.said()[2:] == [("write failed: disk full", {"failures": 1_001, "seconds": 5.0})]
    failures.failed("disk full")
    clock.now_ms += FAILURE_LOG_INTERVAL_MS
    failures.report_due()  # the one counted since goes out with no further failure
    assert lines.said()[3:] == [("write failed: disk full", {"failures": 1, "seconds": 5.0})]


def test_a_kind_quiet_for_an_interval_is_news_again(lines: Lines) -> None:
    clock = Clock()
    failures = failure_log(clock)
    failures.failed("connection refused")
    clock.now_ms += FAILURE_LOG_INTERVAL_MS
    failures.report_due()
    failures.failed("connection refused")
    assert [fields for _, fields in lines.said()] == [{"failures": 1}, {"failures": 1}]


def test_a_line_says_the_last_detail_and_carries_a_bugs_traceback(lines: Lines) -> None:
    clock = Clock()
    failures = failure_log(clock)
    try:
        raise KeyError("a bug")
    except KeyError as error:
        failures.failed("KeyError", "KeyError: 'a bug'", error)
    failures.failed("Unavailable", "the last write failed 0 s ago")
    failures.failed("Unavailable", "the last write failed 1 s ago")
    clock.now_ms += FAILURE_LOG_INTERVAL_MS
    failures.report_due()
    said = [message for message, _ in lines.said()]
    assert said == [
        "write failed: KeyError: 'a bug'",
        "write failed: the last write failed 0 s ago",
        "write failed: the last write failed 1 s ago",
    ]
    assert lines.records[0].exc_info is not None
    assert all(record.exc_info is None for record in lines.records[1:])


def test_kinds_past_the_limit_are_counted_together(lines: Lines) -> None:
    failures = failure_log(Clock())
    for number in range(FAILURE_KINDS_MAX + 10):
        failures.failed(f"kind {number}")
    said = [message for message, _ in lines.said()]
    assert len(said) == FAILURE_KINDS_MAX + 1
    assert said[-1] == f"write failed: {OTHER_FAILURES}"
