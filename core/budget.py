"""The budget rules: what a user's figures are and when a request has room.

Every store reads a ``BudgetSnapshot`` inside the transaction that will act on the answer, and
asks ``decide`` here; no other module compares money against a budget.
"""

from dataclasses import dataclass
from enum import StrEnum

from core.money import Money


class UserStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class BudgetStatus(StrEnum):
    """The ``status`` of a budget check, in order of precedence."""

    ACTIVE = "active"
    SUSPENDED = "suspended"
    EXCEEDED = "exceeded"
    TENANT_EXCEEDED = "tenant_exceeded"


MESSAGES = {
    BudgetStatus.ACTIVE: "OK",
    BudgetStatus.SUSPENDED: "Account suspended",
    BudgetStatus.EXCEEDED: "Budget exceeded",
    BudgetStatus.TENANT_EXCEEDED: "Tenant budget exceeded",
}


@dataclass(frozen=True, slots=True)
class BudgetSnapshot:
    """A user's and their tenant's figures at one instant; holds exclude expired ones."""

    user_status: UserStatus
    plan_budget: Money
    credits: Money
    used: Money
    held: Money
    tenant_cap: Money | None
    tenant_used: Money
    tenant_held: Money

    @property
    def total(self) -> Money:
        """Plan budget plus this period's credits."""
        return Money(self.plan_budget + self.credits)

    @property
    def remaining(self) -> Money:
        """Total minus used minus active holds; not clamped, so overspend shows as negative."""
        return Money(self.total - self.used - self.held)

    def moved(self, used: int = 0, held: int = 0) -> "BudgetSnapshot":
        """The figures after usage and holds change by these amounts, user and tenant alike."""
        # Built field by field: dataclasses.replace costs twice as much, on every write.
        return BudgetSnapshot(
            self.user_status,
            self.plan_budget,
            self.credits,
            Money(self.used + used),
            Money(self.held + held),
            self.tenant_cap,
            Money(self.tenant_used + used),
            Money(self.tenant_held + held),
        )

    @property
    def tenant_remaining(self) -> Money | None:
        if self.tenant_cap is None:
            return None
        return Money(self.tenant_cap - self.tenant_used - self.tenant_held)


def has_room(remaining: Money, cost_estimate: Money) -> bool:
    """Room means something is left and the estimate fits in it."""
    return remaining > 0 and cost_estimate <= remaining


def decide(snapshot: BudgetSnapshot, cost_estimate: Money) -> BudgetStatus:
    """The status of a request of ``cost_estimate``: ``ACTIVE`` is the only one allowed."""
    assert cost_estimate >= 0, cost_estimate
    if snapshot.user_status is not UserStatus.ACTIVE:
        return BudgetStatus.SUSPENDED
    if not has_room(snapshot.remaining, cost_estimate):
        return BudgetStatus.EXCEEDED
    tenant_remaining = snapshot.tenant_remaining
    if tenant_remaining is not None and not has_room(tenant_remaining, cost_estimate):
        return BudgetStatus.TENANT_EXCEEDED
    return BudgetStatus.ACTIVE
