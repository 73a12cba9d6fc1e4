"""The budget rules: what a user's figures are, when a request has room, and which amounts the
counters can take.

Every store reads a ``BudgetSnapshot`` inside the transaction that will act on the answer, and
asks ``check_hold`` (a hold), ``check_usage`` (a usage, through ``core.usage.check_log``) or
``check_credit`` (a grant, through ``core.accounts.check_grant``) here; no other module compares
money against a budget or a bound (``core.money``). A check without a hold asks ``check``, as
``check_hold`` does, on the figures it read.
"""

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from core.errors import AmountOutOfRange, ReservationClosed
from core.money import COST_PER_CALL_MAX, COUNTER_MAX, Money, money_to_text
from core.reservations import Reservation, check_retry


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
    """The status of a request of ``cost_estimate``: ``ACTIVE`` is the only one allowed.

    Room is also what the counters can still take: a call whose usage could not be recorded
    (``used`` plus active holds plus the estimate past ``COUNTER_MAX``, for the user or for
    their tenant, capped or not) is denied, rather than made and then refused at log-usage.

    The database re-checks the room on PostgreSQL: ``ledger_reserve``
    (``postgres_migrations/0004_money_bounds.sql``) restates this arithmetic in plpgsql and
    places a hold only where it finds room; a change here is a change there.
    """
    assert cost_estimate >= 0, cost_estimate
    if snapshot.user_status is not UserStatus.ACTIVE:
        return BudgetStatus.SUSPENDED
    if not has_room(snapshot.remaining, cost_estimate) or not has_room(
        Money(COUNTER_MAX - snapshot.used - snapshot.held), cost_estimate
    ):
        return BudgetStatus.EXCEEDED
    tenant_remaining = snapshot.tenant_remaining
    if tenant_remaining is not None and not has_room(tenant_remaining, cost_estimate):
        return BudgetStatus.TENANT_EXCEEDED
    if not has_room(
        Money(COUNTER_MAX - snapshot.tenant_used - snapshot.tenant_held), cost_estimate
    ):
        return BudgetStatus.TENANT_EXCEEDED
    return BudgetStatus.ACTIVE


@dataclass(frozen=True, slots=True)
class CheckResult:
    """A budget check's answer: its status, the figures (counting the hold when one was placed),
    and the hold, placed now or found again on a retry."""

    status: BudgetStatus
    budget: BudgetSnapshot
    reservation: Reservation | None

    @property
    def allowed(self) -> bool:
        return self.status is BudgetStatus.ACTIVE

    @property
    def message(self) -> str:
        return MESSAGES[self.status]


def check(
    snapshot: BudgetSnapshot,
    cost_estimate: Money,
    place: Callable[[], Reservation] | None = None,
) -> CheckResult:
    """The answer to a check of ``cost_estimate`` on the figures ``snapshot`` as read: every
    budget check, read-only or placing a hold, is decided here, by ``decide``.

    A hold's check runs in the store's write transaction, on the figures read there, and passes
    ``place``: called only when ``decide`` allows, it writes the hold and returns it, and the
    answer counts it. A read-only check passes none.
    """
    status = decide(snapshot, cost_estimate)
    if place is None or status is not BudgetStatus.ACTIVE:
        return CheckResult(status, snapshot, None)
    hold = place()
    return CheckResult(status, snapshot.moved(held=hold.amount), hold)


def check_hold(
    snapshot: BudgetSnapshot,
    cost_estimate: Money,
    existing: Reservation | None,
    usage_logged: bool,
    user_id: str,
    request_id: str,
    now_ms: int,
    place: Callable[[], Reservation],
) -> CheckResult:
    """The answer to a check asking to hold ``cost_estimate`` under ``request_id``, on the
    figures ``snapshot`` and what the request already has: ``existing``, its hold, and
    ``usage_logged``, whether usage was logged under it.

    In this order: a hold already there makes this a retry (``check_retry``: that hold, the
    figures as they are, or a refusal); a request already logged takes no hold; otherwise
    ``check`` decides, and calls ``place`` only where ``decide`` finds room.

    Both stores decide with this inside the transaction that holds the figures. PostgreSQL's
    ``ledger_reserve`` (``postgres_migrations/0004_money_bounds.sql``) re-checks it in the
    database, which writes the hold there: its store asserts that the two agree.
    """
    if existing is not None:
        held = check_retry(existing, user_id, cost_estimate, now_ms)
        return CheckResult(BudgetStatus.ACTIVE, snapshot, held)
    if usage_logged:
        raise ReservationClosed("request_id was already logged", request_id=request_id)
    return check(snapshot, cost_estimate, place)


def check_cost(cost: Money, field: str) -> None:
    """One call's cost, estimated or logged, given or priced, is at most ``COST_PER_CALL_MAX``."""
    if cost > COST_PER_CALL_MAX:
        raise _out_of_range(field, "one call's cost must not exceed", "COST_PER_CALL_MAX")


def check_usage(snapshot: BudgetSnapshot, cost: Money) -> None:
    """A usage of ``cost`` may be recorded: within the per-call bound, and the user's and the
    tenant's ``used`` stay within ``COUNTER_MAX`` (``snapshot`` holds the figures before).

    The database re-checks the bounds: on PostgreSQL ``ledger_log_usage``
    (``postgres_migrations/0004_money_bounds.sql``) restates them in plpgsql; on both, the
    schema's triggers refuse a counter growing past ``COUNTER_MAX``."""
    check_cost(cost, "cost_total")
    if snapshot.used + cost > COUNTER_MAX:
        raise _out_of_range("cost_total", "it would take the user's used past", "COUNTER_MAX")
    if snapshot.tenant_used + cost > COUNTER_MAX:
        raise _out_of_range("cost_total", "it would take the tenant's used past", "COUNTER_MAX")


def check_credit(snapshot: BudgetSnapshot, amount: Money) -> None:
    """A grant of ``amount`` keeps the user's ``credits`` within ``COUNTER_MAX``."""
    if snapshot.credits + amount > COUNTER_MAX:
        raise _out_of_range("amount", "it would take the user's credits past", "COUNTER_MAX")


_BOUNDS = {"COST_PER_CALL_MAX": COST_PER_CALL_MAX, "COUNTER_MAX": COUNTER_MAX}


def _out_of_range(field: str, refusal: str, bound_name: str) -> AmountOutOfRange:
    bound_text = money_to_text(_BOUNDS[bound_name])
    return AmountOutOfRange(
        f"{field}: {refusal} {bound_name} ({bound_text}); nothing was written",
        field=field,
        bound=Decimal(bound_text),
    )
