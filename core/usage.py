"""Usage: one append-only row per ``request_id``; a replay must carry the same content.

What a log-usage answers (``LogOutcome``, decided by ``check_log``) and usage added up for a
report (``UsageGroup``) are here too.
"""

from dataclasses import dataclass

from core.budget import BudgetSnapshot, check_usage
from core.errors import IdempotencyConflict
from core.money import Money
from core.reservations import Reservation, check_settle, counting_amount


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """What identifies a usage fact; ``response_time_ms`` is telemetry and not compared."""

    request_id: str
    user_id: str
    model: str
    tokens_input: int
    tokens_output: int
    cost: Money


@dataclass(frozen=True, slots=True)
class LogOutcome:
    """A log-usage's answer: whether it was new, and the figures after it."""

    created: bool
    budget: BudgetSnapshot


@dataclass(frozen=True, slots=True)
class UsageGroup:
    """Usage added up over one key: a model name, or a 15-minute bucket start for days."""

    key: str | int
    requests: int
    tokens_input: int
    tokens_output: int
    cost: Money


def check_replay(existing: UsageRecord, incoming: UsageRecord) -> None:
    """An identical replay is accepted as already done; any difference is a conflict."""
    assert existing.request_id == incoming.request_id
    if existing != incoming:
        raise IdempotencyConflict(
            "request_id was already logged with different content", request_id=incoming.request_id
        )


def check_log(
    snapshot: BudgetSnapshot,
    logged: UsageRecord | None,
    reservation: Reservation | None,
    record: UsageRecord,
    now_ms: int,
) -> LogOutcome:
    """The answer to logging ``record``, on the figures ``snapshot`` and what its
    ``request_id`` already has: ``logged``, its usage, and ``reservation``, its hold. Created
    means the store is to write it; the figures are those after it.

    In this order: a usage already logged makes this a replay (``check_replay``: done, nothing
    written, or a conflict); a new usage must be its hold's user's (``check_settle``) and within
    the bounds of ``core.budget.check_usage``; it adds its cost to used, and the hold it settles
    stops counting (``counting_amount``).

    Both stores decide with this inside the transaction that holds the figures. PostgreSQL's
    ``ledger_log_usage`` (``postgres_migrations/0004_money_bounds.sql``) re-checks it in the
    database, which writes the usage there: its store asserts that the two agree.
    """
    if logged is not None:
        check_replay(logged, record)
        return LogOutcome(False, snapshot)
    check_settle(reservation, record.user_id)
    check_usage(snapshot, record.cost)
    released = counting_amount(reservation, now_ms)
    return LogOutcome(True, snapshot.moved(used=record.cost, held=-released))
