"""What a gateway holds when its estimate of a call was only a guess and did not fit."""

from decimal import Decimal

from wire.schemas import CheckBudgetResponse


def fitting_hold(
    estimate: Decimal, estimate_is_guess: bool, denial: CheckBudgetResponse
) -> Decimal | None:
    """What to hold instead when a hold of ``estimate`` was denied, or None: hold nothing.

    A guessed estimate (the request set no output limit) must not price a call out of a budget
    it may well fit: the call holds what the user has left instead. The user then has nothing
    left, so no other call of theirs is admitted until this one is logged: at most one call per
    user runs past the budget, by at most its own cost beyond what remained. A real limit
    (``max_tokens``) is never cut, and a tenant's cap is never worked around.
    """
    remaining = denial.budget.remaining
    if not estimate_is_guess or denial.status != "exceeded":
        return None
    if remaining <= 0 or remaining >= estimate:
        return None
    return remaining
