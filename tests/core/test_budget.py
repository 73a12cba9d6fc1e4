"""The budget rule: status precedence, unclamped remaining, the room rule for an estimate, and
what a check asking for a hold gets, in which order."""

import pytest
from core_helpers import usd

from core.budget import (
    MESSAGES,
    BudgetSnapshot,
    BudgetStatus,
    CheckResult,
    UserStatus,
    check,
    check_cost,
    check_credit,
    check_hold,
    check_usage,
    decide,
    has_room,
)
from core.errors import AmountOutOfRange, IdempotencyConflict, ReservationClosed
from core.money import BUDGET_MAX, COST_PER_CALL_MAX, COUNTER_MAX
from core.reservations import Reservation, ReservationState


def snapshot(
    *,
    status: UserStatus = UserStatus.ACTIVE,
    plan: str = "10",
    credits: str = "0",
    used: str = "0",
    held: str = "0",
    tenant_cap: str | None = None,
    tenant_used: str = "0",
    tenant_held: str = "0",
) -> BudgetSnapshot:
    return BudgetSnapshot(
        user_status=status,
        plan_budget=usd(plan),
        credits=usd(credits),
        used=usd(used),
        held=usd(held),
        tenant_cap=None if tenant_cap is None else usd(tenant_cap),
        tenant_used=usd(tenant_used),
        tenant_held=usd(tenant_held),
    )


def test_total_and_remaining():
    figures = snapshot(plan="10", credits="2.5", used="3", held="1.25")
    assert figures.total == usd("12.5")
    assert figures.remaining == usd("8.25")


def test_moved_shifts_used_and_held_for_user_and_tenant_and_keeps_the_rest():
    before = snapshot(
        status=UserStatus.SUSPENDED, plan="10", credits="2", used="3", held="1",
        tenant_cap="100", tenant_used="30", tenant_held="4",
    )  # fmt: skip
    after = before.moved(used=usd("0.5"), held=-usd("1"))
    assert after == snapshot(
        status=UserStatus.SUSPENDED, plan="10", credits="2", used="3.5", held="0",
        tenant_cap="100", tenant_used="30.5", tenant_held="3",
    )  # fmt: skip


def test_remaining_is_not_clamped():
    figures = snapshot(plan="10", used="11", held="0.5")
    assert figures.remaining == -usd("1.5")
    assert decide(figures, 0) is BudgetStatus.EXCEEDED


def test_tenant_remaining():
    assert snapshot().tenant_remaining is None
    assert snapshot(tenant_cap="5", tenant_used="6", tenant_held="1").tenant_remaining == -usd("2")


def test_suspended_wins_over_everything():
    figures = snapshot(status=UserStatus.SUSPENDED, used="20", tenant_cap="1", tenant_used="5")
    assert decide(figures, usd("1")) is BudgetStatus.SUSPENDED


def test_exceeded_wins_over_tenant_exceeded():
    figures = snapshot(used="10", tenant_cap="1", tenant_used="5")
    assert decide(figures, usd("1")) is BudgetStatus.EXCEEDED


def test_tenant_exceeded_when_only_the_tenant_is_out():
    figures = snapshot(used="1", tenant_cap="5", tenant_used="4", tenant_held="1")
    assert decide(figures, usd("0.01")) is BudgetStatus.TENANT_EXCEEDED


def test_tenant_estimate_must_fit_the_tenant_too():
    figures = snapshot(tenant_cap="5", tenant_used="4")
    assert decide(figures, usd("1")) is BudgetStatus.ACTIVE
    assert decide(figures, usd("1.000000001")) is BudgetStatus.TENANT_EXCEEDED


def test_active_when_everything_has_room():
    assert decide(snapshot(tenant_cap="100"), usd("1")) is BudgetStatus.ACTIVE


def test_no_tenant_cap_is_ignored():
    figures = snapshot(tenant_cap=None, tenant_used="1000000", tenant_held="1000000")
    assert decide(figures, usd("1")) is BudgetStatus.ACTIVE


def test_estimate_equal_to_remaining_is_allowed():
    figures = snapshot(plan="10", used="4", held="1")
    assert decide(figures, usd("5")) is BudgetStatus.ACTIVE
    assert decide(figures, usd("5") + 1) is BudgetStatus.EXCEEDED


def test_zero_estimate_with_zero_remaining_is_denied():
    figures = snapshot(plan="10", used="10")
    assert figures.remaining == 0
    assert decide(figures, 0) is BudgetStatus.EXCEEDED


def test_zero_estimate_with_some_remaining_is_allowed():
    assert decide(snapshot(plan="10", used="9.999999999"), 0) is BudgetStatus.ACTIVE


def test_zero_tenant_remaining_denies_a_zero_estimate():
    assert decide(snapshot(tenant_cap="5", tenant_used="5"), 0) is BudgetStatus.TENANT_EXCEEDED


@pytest.mark.parametrize(
    ("remaining", "estimate", "room"),
    [(1, 1, True), (1, 0, True), (1, 2, False), (0, 0, False), (-1, 0, False), (10, 3, True)],
)
def test_has_room(remaining, estimate, room):
    assert has_room(remaining, estimate) is room


def test_every_status_has_a_message():
    assert set(MESSAGES) == set(BudgetStatus)
    assert MESSAGES[BudgetStatus.ACTIVE] == "OK"


# -- check: decide's answer, the same for a read-only check and a hold ----------------------


def test_a_check_without_a_hold_answers_decides_status_on_the_figures_read():
    figures = snapshot(plan="10", used="9")
    assert check(figures, usd("1")) == CheckResult(BudgetStatus.ACTIVE, figures, None)
    assert check(figures, usd("2")) == CheckResult(BudgetStatus.EXCEEDED, figures, None)


def test_a_hold_is_placed_only_when_decide_allows_and_the_answer_counts_it():
    placed = []

    def place() -> Reservation:
        placed.append(Reservation("r1", "u1", usd("1"), ReservationState.OPEN, 60_000))
        return placed[-1]

    figures = snapshot(plan="10", used="9", tenant_cap="100")
    denied = check(figures, usd("2"), place)
    assert denied == CheckResult(BudgetStatus.EXCEEDED, figures, None)
    assert placed == []
    allowed = check(figures, usd("1"), place)
    assert allowed == CheckResult(BudgetStatus.ACTIVE, figures.moved(held=usd("1")), placed[0])
    assert allowed.allowed and allowed.message == "OK"
    assert allowed.budget.remaining == 0 and allowed.budget.tenant_held == usd("1")


# -- check_hold: a retry, then a request already logged, then check ------------------------

NOW = 1_000_000
EXPIRES = NOW + 600_000


def open_hold(amount: str = "1") -> Reservation:
    return Reservation("r1", "u1", usd(amount), ReservationState.OPEN, EXPIRES)


def never_placed() -> Reservation:
    raise AssertionError("no hold is to be written")


def test_a_hold_with_room_is_placed_through_check():
    figures = snapshot(plan="10", used="9")
    result = check_hold(figures, usd("1"), None, False, "u1", "r1", NOW, open_hold)
    assert result == CheckResult(BudgetStatus.ACTIVE, figures.moved(held=usd("1")), open_hold())


def test_a_retry_gets_its_hold_back_without_room_and_writes_nothing():
    existing = open_hold()
    figures = snapshot(status=UserStatus.SUSPENDED, used="10")
    result = check_hold(figures, usd("1"), existing, False, "u1", "r1", NOW, never_placed)
    assert result == CheckResult(BudgetStatus.ACTIVE, figures, existing)
    assert result.reservation is existing


def test_a_retry_for_another_amount_conflicts_before_the_usage_already_logged_is_asked():
    with pytest.raises(IdempotencyConflict):
        check_hold(snapshot(), usd("2"), open_hold(), True, "u1", "r1", NOW, never_placed)


def test_a_request_already_logged_takes_no_hold():
    with pytest.raises(ReservationClosed, match="already logged") as caught:
        check_hold(snapshot(), usd("1"), None, True, "u1", "r1", NOW, never_placed)
    assert caught.value.details == {"request_id": "r1"}


# -- the bounds of core.money ---------------------------------------------------------------


def nanos_snapshot(**figures: int) -> BudgetSnapshot:
    """Figures in nano-dollars, for the edges of the bounds."""
    values = {
        "user_status": UserStatus.ACTIVE,
        "plan_budget": BUDGET_MAX,
        "credits": 0,
        "used": 0,
        "held": 0,
        "tenant_cap": None,
        "tenant_used": 0,
        "tenant_held": 0,
    }
    values.update(figures)
    return BudgetSnapshot(**values)


def test_a_hold_must_leave_the_users_counters_within_counter_max():
    """Credits can make the total larger than COUNTER_MAX; the counters still bound the room."""
    figures = nanos_snapshot(credits=BUDGET_MAX, used=COUNTER_MAX - 10, held=4)
    assert figures.remaining > 10
    assert decide(figures, 6) is BudgetStatus.ACTIVE
    assert decide(figures, 7) is BudgetStatus.EXCEEDED


def test_a_hold_must_leave_an_uncapped_tenants_counters_within_counter_max():
    figures = nanos_snapshot(tenant_used=COUNTER_MAX - 10, tenant_held=4)
    assert decide(figures, 6) is BudgetStatus.ACTIVE
    assert decide(figures, 7) is BudgetStatus.TENANT_EXCEEDED
    full = nanos_snapshot(tenant_used=COUNTER_MAX)
    assert decide(full, 0) is BudgetStatus.TENANT_EXCEEDED


def test_a_capped_tenant_past_counter_max_is_denied_too():
    figures = nanos_snapshot(tenant_cap=BUDGET_MAX, tenant_used=COUNTER_MAX - 1, tenant_held=1)
    assert decide(figures, 0) is BudgetStatus.TENANT_EXCEEDED


def test_a_cost_up_to_cost_per_call_max_passes_and_one_nano_more_is_out_of_range():
    check_cost(COST_PER_CALL_MAX, "cost_estimate")
    with pytest.raises(AmountOutOfRange) as refused:
        check_cost(COST_PER_CALL_MAX + 1, "cost_estimate")
    assert refused.value.code == "amount_out_of_range"
    assert refused.value.details == {"field": "cost_estimate", "bound": 1_000_000}
    assert "COST_PER_CALL_MAX" in refused.value.message


@pytest.mark.parametrize(
    ("figures", "cost", "who"),
    [
        ({"used": COUNTER_MAX - 5}, 6, "user's used"),
        ({"tenant_used": COUNTER_MAX - 5}, 6, "tenant's used"),
        ({"used": COUNTER_MAX}, 1, "user's used"),
        ({}, COST_PER_CALL_MAX + 1, "one call's cost"),
    ],
)
def test_a_usage_that_would_pass_a_bound_is_out_of_range(figures, cost, who):
    with pytest.raises(AmountOutOfRange) as refused:
        check_usage(nanos_snapshot(**figures), cost)
    assert refused.value.details["field"] == "cost_total"
    assert who in refused.value.message


def test_a_usage_may_fill_the_counters_to_the_bound_exactly():
    check_usage(nanos_snapshot(used=COUNTER_MAX - 5, tenant_used=COUNTER_MAX - 5), 5)
    check_usage(nanos_snapshot(used=COUNTER_MAX, tenant_used=COUNTER_MAX), 0)


def test_a_credit_may_fill_credits_to_the_bound_and_no_further():
    check_credit(nanos_snapshot(credits=COUNTER_MAX - 5), 5)
    with pytest.raises(AmountOutOfRange) as refused:
        check_credit(nanos_snapshot(credits=COUNTER_MAX - 5), 6)
    assert refused.value.details == {"field": "amount", "bound": 1_000_000_000}
    assert "COUNTER_MAX" in refused.value.message


def test_the_widest_room_arithmetic_stays_inside_int64():
    """Every figure at its bound: budget + credits - used - held, user and tenant alike."""
    int64_max = 2**63 - 1
    assert BUDGET_MAX + COUNTER_MAX + COUNTER_MAX + COUNTER_MAX < int64_max
    assert COUNTER_MAX + COST_PER_CALL_MAX < int64_max
