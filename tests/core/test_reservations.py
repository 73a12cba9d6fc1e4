"""Hold rules: a retry is the same hold or a refusal; settle and release move the right amount."""

import pytest

from core.errors import IdempotencyConflict, ReservationClosed
from core.reservations import (
    Reservation,
    ReservationState,
    check_release,
    check_retry,
    check_settle,
    closed_state,
    counting_amount,
)

NOW = 1_000_000
EXPIRES = NOW + 600_000


def hold(
    state: ReservationState = ReservationState.OPEN,
    *,
    user: str = "u1",
    amount: int = 500,
    expires: int = EXPIRES,
) -> Reservation:
    return Reservation("req-1", user, amount, state, expires)


def test_is_counting_only_while_open_and_before_expiry():
    assert hold().is_counting(NOW)
    assert hold().is_counting(EXPIRES - 1)
    assert not hold().is_counting(EXPIRES)
    for state in (ReservationState.SETTLED, ReservationState.RELEASED, ReservationState.EXPIRED):
        assert not hold(state).is_counting(NOW)


def test_retry_same_user_same_amount_returns_the_same_hold():
    existing = hold()
    assert check_retry(existing, "u1", 500, NOW) is existing


@pytest.mark.parametrize(("user", "amount"), [("u2", 500), ("u1", 501), ("u2", 1)])
def test_retry_by_another_user_or_amount_conflicts(user, amount):
    with pytest.raises(IdempotencyConflict) as caught:
        check_retry(hold(), user, amount, NOW)
    assert caught.value.code == "idempotency_conflict"
    assert caught.value.details["request_id"] == "req-1"


@pytest.mark.parametrize(
    ("state", "word"),
    [
        (ReservationState.SETTLED, "settled"),
        (ReservationState.RELEASED, "released"),
        (ReservationState.EXPIRED, "expired"),
    ],
)
def test_retry_of_a_closed_hold_is_refused(state, word):
    with pytest.raises(ReservationClosed, match=word):
        check_retry(hold(state), "u1", 500, NOW)


def test_retry_of_an_open_hold_past_expiry_is_refused_as_expired():
    with pytest.raises(ReservationClosed, match="expired"):
        check_retry(hold(), "u1", 500, EXPIRES)


def test_retry_conflict_is_checked_before_closed():
    with pytest.raises(IdempotencyConflict):
        check_retry(hold(ReservationState.SETTLED), "u1", 999, NOW)


def test_closed_state():
    assert closed_state(hold(), NOW) is ReservationState.OPEN
    assert closed_state(hold(), EXPIRES) is ReservationState.EXPIRED
    assert closed_state(hold(ReservationState.RELEASED), EXPIRES) is ReservationState.RELEASED


def test_usage_without_hold_settles_nothing_and_nothing_counts():
    check_settle(None, "u1")
    assert counting_amount(None, NOW) == 0


def test_an_open_hold_counts_until_its_expiry():
    assert counting_amount(hold(), NOW) == 500
    assert counting_amount(hold(expires=NOW), NOW) == 0


@pytest.mark.parametrize(
    "state", [ReservationState.SETTLED, ReservationState.RELEASED, ReservationState.EXPIRED]
)
def test_a_closed_hold_counts_nothing(state):
    assert counting_amount(hold(state), NOW) == 0


def test_settle_by_another_user_conflicts():
    with pytest.raises(IdempotencyConflict):
        check_settle(hold(), "u2")


def test_release_of_an_open_hold_closes_it():
    assert check_release(hold()) is True


@pytest.mark.parametrize("state", [ReservationState.RELEASED, ReservationState.EXPIRED])
def test_release_twice_or_after_expiry_is_a_no_op(state):
    assert check_release(hold(state)) is False


def test_release_of_a_settled_hold_is_refused():
    with pytest.raises(ReservationClosed, match="settled"):
        check_release(hold(ReservationState.SETTLED))
