"""The budget rule: status precedence, unclamped remaining, and the room rule for an estimate."""

import pytest
from core_helpers import usd

from core.budget import MESSAGES, BudgetSnapshot, BudgetStatus, UserStatus, decide, has_room


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
