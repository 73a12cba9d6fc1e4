"""Usage replay rule: an identical replay is accepted, any difference in content conflicts;
what logging a usage decides, in which order."""

import dataclasses

import pytest

from core.budget import BudgetSnapshot, UserStatus
from core.errors import AmountOutOfRange, IdempotencyConflict
from core.money import COUNTER_MAX
from core.reservations import Reservation, ReservationState
from core.usage import LogOutcome, UsageRecord, check_log, check_replay

RECORD = UsageRecord("req-1", "u1", "gpt-4o", 10, 20, 225_000)
NOW = 1_000_000
FIGURES = BudgetSnapshot(UserStatus.ACTIVE, 1_000_000, 0, 100_000, 300_000, None, 0, 300_000)
HOLD = Reservation("req-1", "u1", 300_000, ReservationState.OPEN, NOW + 1)
FULL = dataclasses.replace(FIGURES, used=COUNTER_MAX)


def test_identical_replay_is_accepted():
    assert check_replay(RECORD, dataclasses.replace(RECORD)) is None


@pytest.mark.parametrize(
    "change",
    [
        {"user_id": "u2"},
        {"model": "gpt-4o-mini"},
        {"tokens_input": 11},
        {"tokens_output": 21},
        {"cost": 225_001},
    ],
)
def test_any_difference_conflicts(change):
    with pytest.raises(IdempotencyConflict) as caught:
        check_replay(RECORD, dataclasses.replace(RECORD, **change))
    assert caught.value.details == {"request_id": "req-1"}


def test_response_time_is_not_part_of_the_record():
    assert "response_time_ms" not in {field.name for field in dataclasses.fields(UsageRecord)}


def test_a_new_usage_counts_its_cost_and_its_hold_stops_counting():
    outcome = check_log(FIGURES, None, HOLD, RECORD, NOW)
    assert outcome.created
    assert (outcome.budget.used, outcome.budget.held) == (325_000, 0)
    assert (outcome.budget.tenant_used, outcome.budget.tenant_held) == (225_000, 0)


def test_a_usage_settling_an_expired_hold_releases_nothing_more():
    outcome = check_log(FIGURES, None, HOLD, RECORD, HOLD.expires_at_ms)
    assert (outcome.budget.used, outcome.budget.held) == (325_000, 300_000)


def test_a_replay_writes_nothing_even_past_a_bound_now():
    assert check_log(FULL, RECORD, None, dataclasses.replace(RECORD), NOW) == LogOutcome(
        False, FULL
    )


def test_a_replay_with_other_content_conflicts():
    with pytest.raises(IdempotencyConflict):
        check_log(FIGURES, RECORD, None, dataclasses.replace(RECORD, cost=1), NOW)


def test_a_usage_on_another_users_hold_conflicts_before_the_bounds_are_asked():
    with pytest.raises(IdempotencyConflict):
        check_log(FULL, None, dataclasses.replace(HOLD, user_id="u2"), RECORD, NOW)


def test_a_usage_past_a_bound_is_refused():
    with pytest.raises(AmountOutOfRange):
        check_log(FULL, None, HOLD, RECORD, NOW)
