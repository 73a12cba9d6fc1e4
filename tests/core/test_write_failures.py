"""The health check's memory of a failed write (``core.store.base.WriteFailures``)."""

import pytest
from core_helpers import FakeClock

from core.errors import Unavailable
from core.store.base import WRITE_FAILURE_REPORT_MS, WriteFailures


def test_a_failed_write_is_reported_until_a_write_succeeds():
    failures = WriteFailures(FakeClock(1_000_000))
    failures.check()
    failures.failed("database or disk is full")
    with pytest.raises(
        Unavailable, match="the last write failed 0 s ago: database or disk is full"
    ):
        failures.check()
    failures.succeeded()
    failures.check()


def test_with_no_write_after_it_a_failure_is_reported_for_a_limited_time():
    clock = FakeClock(1_000_000)
    failures = WriteFailures(clock)
    failures.failed("disk I/O error")
    clock.advance(WRITE_FAILURE_REPORT_MS - 1)
    with pytest.raises(Unavailable, match="failed 59 s ago"):
        failures.check()
    clock.advance(1)
    failures.check()
