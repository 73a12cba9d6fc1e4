"""Reservations (holds): how one is placed, retried, settled, released and expired.

A hold keeps ``amount`` out of a user's (and tenant's) remaining budget until it is settled by
the usage with the same ``request_id``, released, or expires. The per-user and per-tenant held
counters always equal the sum of holds in state ``open`` (triggers in the schema keep them); a
hold past its expiry stays ``open`` until a sweep marks it ``expired``, and readers leave such
holds out of what they count.
"""

from dataclasses import dataclass
from enum import StrEnum

from core.errors import IdempotencyConflict, Invalid, ReservationClosed
from core.money import Money

RESERVATION_RETENTION_MARGIN_SECONDS = 24 * 3600


class ReservationState(StrEnum):
    OPEN = "open"
    SETTLED = "settled"
    RELEASED = "released"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Reservation:
    request_id: str
    user_id: str
    amount: Money
    state: ReservationState
    expires_at_ms: int

    def is_counting(self, now_ms: int) -> bool:
        """Whether the hold still keeps money out of the remaining budget."""
        return self.state is ReservationState.OPEN and now_ms < self.expires_at_ms


def check_retry(existing: Reservation, user_id: str, amount: Money, now_ms: int) -> Reservation:
    """A hold asked for again under the same ``request_id``: the same hold, or a refusal."""
    if existing.user_id != user_id or existing.amount != amount:
        raise IdempotencyConflict(
            "request_id already holds a reservation for a different user or amount",
            request_id=existing.request_id,
        )
    if not existing.is_counting(now_ms):
        raise ReservationClosed(
            f"reservation is {closed_state(existing, now_ms)}", request_id=existing.request_id
        )
    return existing


def closed_state(reservation: Reservation, now_ms: int) -> ReservationState:
    """The state a reader should report: an open hold past its expiry is expired."""
    if reservation.state is ReservationState.OPEN and now_ms >= reservation.expires_at_ms:
        return ReservationState.EXPIRED
    return reservation.state


def check_settle(reservation: Reservation | None, user_id: str) -> None:
    """Usage settles the hold with its ``request_id``, which must be its own user's.

    Usage is a fact and is recorded whatever the hold's state; the store settles an ``open``
    hold, or one that expired before the usage arrived (a trigger in the schema does it).
    PostgreSQL's ``ledger_log_usage`` re-checks the hold's user in plpgsql.
    """
    if reservation is not None and reservation.user_id != user_id:
        raise IdempotencyConflict(
            "request_id holds a reservation for a different user", request_id=reservation.request_id
        )


def counting_amount(reservation: Reservation | None, now_ms: int) -> Money:
    """What a hold keeps out of the remaining budget right now: its amount while it counts."""
    if reservation is None or not reservation.is_counting(now_ms):
        return Money(0)
    return reservation.amount


def check_release(reservation: Reservation) -> bool:
    """Whether a release has a hold to close; releasing twice is a no-op.

    A released or expired hold no longer counts, which is what the caller wants: 200 again. A
    settled hold became usage; releasing it would be a lie, so it is refused. PostgreSQL's
    ``ledger_release`` (``postgres_migrations/0001_ledger.sql``) closes only an open hold too;
    its store asserts that the two agree.
    """
    if reservation.state is ReservationState.SETTLED:
        raise ReservationClosed("reservation is settled", request_id=reservation.request_id)
    return reservation.state is ReservationState.OPEN


def retention_cutoff_ms(now_ms: int, retention_seconds: int, ttl_seconds: int) -> int:
    """Holds closed before this instant may be deleted (they never are otherwise).

    The retention must outlast the hold's TTL plus a day, so any retry of a check, a log or a
    release still meets its hold: after that a retry of the same ``request_id`` is implausible.
    """
    retention_seconds_min = ttl_seconds + RESERVATION_RETENTION_MARGIN_SECONDS
    if retention_seconds < retention_seconds_min:
        raise Invalid(
            f"must be at least RESERVATION_TTL_SECONDS + 1 day ({retention_seconds_min} s)",
            field="retention_seconds",
        )
    return now_ms - retention_seconds * 1000
