"""Repeated failures logged as one line per kind, with their count: a store's failed writes
and housekeeping, a pool's lost connections, the health check's failed probes."""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# Failures of one kind are logged at most this often, as one line with their count: on a full
# disk a traceback per refused write made 24,000 records in 20 s, onto the disk that was full.
FAILURE_LOG_INTERVAL_MS = 5_000
# Kinds of failure counted apart; failures of further kinds are counted together.
FAILURE_KINDS_MAX = 32
OTHER_FAILURES = "other failures"


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


@dataclass(slots=True)
class _FailureKind:
    logged_at_ms: int | None = None  # when its last line was logged
    count: int = 0  # failures since
    detail: str = ""  # the last one's text
    error: BaseException | None = None  # the last one's, when it was a bug
    fields: dict[str, object] | None = None  # the last one's own, such as its request id


class FailureLog:
    """Repeated failures logged as one line per kind at most every ``FAILURE_LOG_INTERVAL_MS``,
    with how many there were, never a line per failure.

    The first failure of a kind is logged at once. Later ones are counted, and their count goes
    out with the next failure of that kind once the interval has passed, or from ``report_due``
    (a store's housekeeping thread calls it a few times a second) when none comes. A kind quiet
    for an interval is forgotten: its next failure is news again.
    """

    def __init__(
        self,
        logger: logging.Logger,
        message: str,
        clock_ms: Callable[[], int] = _monotonic_ms,
    ) -> None:
        self._logger = logger
        self._message = message
        self._clock_ms = clock_ms
        self._lock = threading.Lock()
        self._kinds: dict[str, _FailureKind] = {}

    def failed(
        self,
        kind: str,
        detail: str | None = None,
        error: BaseException | None = None,
        fields: dict[str, object] | None = None,
    ) -> None:
        """Count one failure of ``kind``. The line says ``detail`` (the last one's, when the
        failures of a kind differ in their text; else the kind); ``error``, for a failure that
        is a bug, puts its traceback in the line, and ``fields`` (the last one's) go with it."""
        now_ms = self._clock_ms()
        with self._lock:
            if kind not in self._kinds and len(self._kinds) >= FAILURE_KINDS_MAX:
                kind = OTHER_FAILURES
            state = self._kinds.setdefault(kind, _FailureKind())
            state.count += 1
            state.detail = kind if detail is None else detail
            state.error = error
            state.fields = fields
            line = _take_due(state, now_ms)
        if line is not None:
            self._write(*line)

    def report_due(self) -> None:
        """Log the failures counted since their kind's last line, where an interval has passed."""
        if not self._kinds:  # read without the lock: mostly nothing has failed
            return
        now_ms = self._clock_ms()
        lines = []
        with self._lock:
            for kind, state in list(self._kinds.items()):
                line = _take_due(state, now_ms)
                if line is not None:
                    lines.append(line)
                elif state.count == 0 and _interval_passed(state, now_ms):
                    del self._kinds[kind]
        for line in lines:
            self._write(*line)

    def _write(
        self,
        detail: str,
        count: int,
        since_ms: int | None,
        error: BaseException | None,
        own_fields: dict[str, object] | None,
    ) -> None:
        fields: dict[str, object] = {**(own_fields or {}), "failures": count}
        if since_ms is not None:
            fields["seconds"] = round(since_ms / 1000, 1)
        self._logger.error(
            "%s: %s", self._message, detail, exc_info=error, extra={"fields": fields}
        )


def _interval_passed(state: _FailureKind, now_ms: int) -> bool:
    return state.logged_at_ms is None or now_ms - state.logged_at_ms >= FAILURE_LOG_INTERVAL_MS


def _take_due(
    state: _FailureKind, now_ms: int
) -> tuple[str, int, int | None, BaseException | None, dict[str, object] | None] | None:
    """The line to log for a kind now, if one is due; its count starts again."""
    if state.count == 0 or not _interval_passed(state, now_ms):
        return None
    since_ms = None if state.logged_at_ms is None else now_ms - state.logged_at_ms
    line = (state.detail, state.count, since_ms, state.error, state.fields)
    state.logged_at_ms, state.count, state.error, state.fields = now_ms, 0, None, None
    return line
