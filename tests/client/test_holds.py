"""``client.holds.fitting_hold``: a guessed estimate that does not fit holds what remains."""

from decimal import Decimal

import pytest

from client.holds import fitting_hold
from wire.schemas import Budget, CheckBudgetResponse

D = Decimal


def denial(remaining: str, status: str = "exceeded") -> CheckBudgetResponse:
    left = D(remaining)
    return CheckBudgetResponse(
        allowed=False,
        budget=Budget(total=D("1"), used=D("1") - left, remaining=left),
        status=status,
        message="denied",
    )


def test_a_guess_that_does_not_fit_holds_what_remains() -> None:
    assert fitting_hold(D("0.0103"), True, denial("0.004")) == D("0.004")


def test_a_real_limit_is_never_cut() -> None:
    assert fitting_hold(D("0.0103"), False, denial("0.004")) is None


@pytest.mark.parametrize("remaining", ["0", "0.0103", "0.02"])
def test_nothing_left_or_room_enough_holds_nothing_more(remaining: str) -> None:
    """Nothing left: no call fits. Room for the estimate: the denial was not about the amount."""
    assert fitting_hold(D("0.0103"), True, denial(remaining)) is None


@pytest.mark.parametrize("status", ["tenant_exceeded", "suspended", "not_found"])
def test_only_the_users_own_budget_is_worked_with(status: str) -> None:
    """A tenant's cap, a suspension or an unknown user is never held around."""
    assert fitting_hold(D("0.0103"), True, denial("0.004", status)) is None
