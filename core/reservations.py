"""Reservations (holds): how one is placed, retried, settled, released and expired.

A hold keeps ``amount`` out of a user's (and tenant's) remaining budget until it is settled by
the usage with the same ``request_id``, released, or expires. The per-user and per-tenant held
counters always equal the sum of holds in state ``open``; a hold past its expiry stays ``open``
until a sweep marks it ``expired``, and readers leave such holds out of what they count.
"""

from dataclasses import dataclass
from enum import StrEnum

from core.errors import IdempotencyConflict, ReservationClosed
from core.money import Money


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


def held_release_on_settle(reservation: Reservation | None, user_id: str) -> Money:
    """How much the held counters drop when usage with this hold's ``request_id`` is logged.

    Usage is a fact and is recorded whatever the hold's state; only an ``open`` hold (even one
    past expiry, not yet swept) is still in the counters and comes out of them.
    """
    if reservation is None:
        return Money(0)
    if reservation.user_id != user_id:
        raise IdempotencyConflict(
            "request_id holds a reservation for a different user", request_id=reservation.request_id
        )
    if reservation.state is ReservationState.OPEN:
        return reservation.amount
    return Money(0)


def check_release(reservation: Reservation) -> Money:
    """How much a release takes out of the held counters; releasing twice is a no-op.

    A released or expired hold no longer counts, which is what the caller wants: 200 again. A
    settled hold became usage; releasing it would be a lie, so it is refused.
    """
    if reservation.state is ReservationState.SETTLED:
        raise ReservationClosed("reservation is settled", request_id=reservation.request_id)
    if reservation.state is ReservationState.OPEN:
        return reservation.amount
    return Money(0)
