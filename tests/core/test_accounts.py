"""The grant rule: a replayed grant_id is done when its content is the same and a conflict when
not, whatever the credits are now; a new grant must keep credits within the bound."""

import dataclasses

import pytest

from core.accounts import CreditGrant, check_grant
from core.budget import BudgetSnapshot, UserStatus
from core.errors import AmountOutOfRange, IdempotencyConflict
from core.money import COUNTER_MAX

GRANT = CreditGrant("g1", "u1", 5, "goodwill")
FIGURES = BudgetSnapshot(UserStatus.ACTIVE, 100, 0, 0, 0, None, 0, 0)
FULL = dataclasses.replace(FIGURES, credits=COUNTER_MAX)


def test_a_new_grant_within_the_bound_is_written():
    assert check_grant(FIGURES, None, GRANT) is True


def test_a_replay_is_done_and_writes_nothing_even_at_the_bound():
    assert check_grant(FULL, dataclasses.replace(GRANT), GRANT) is False


@pytest.mark.parametrize("change", [{"user_id": "u2"}, {"amount": 6}, {"reason": "other"}])
def test_a_replay_with_other_content_conflicts(change):
    with pytest.raises(IdempotencyConflict) as caught:
        check_grant(FIGURES, dataclasses.replace(GRANT, **change), GRANT)
    assert caught.value.details == {"grant_id": "g1"}


def test_a_new_grant_past_the_bound_is_refused():
    with pytest.raises(AmountOutOfRange):
        check_grant(FULL, None, GRANT)
