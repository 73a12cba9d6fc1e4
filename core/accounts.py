"""Who holds a budget: users with their open period's figures, the products and tenants they
belong to, and the credit granted to them. The ledger hands these out and every store returns
them; the rules they obey are in ``core.budget``, but for a grant's replay (``check_grant``)."""

from dataclasses import dataclass

from core.budget import BudgetSnapshot, UserStatus, check_credit
from core.errors import IdempotencyConflict
from core.money import Money


@dataclass(frozen=True, slots=True)
class Product:
    id: str
    name: str
    monthly_budget: Money


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    monthly_budget: Money | None


@dataclass(frozen=True, slots=True)
class UserView:
    """A user with the figures of their open period."""

    id: str
    email: str
    product_id: str
    tenant_id: str
    status: UserStatus
    period_label: str
    period_start_ms: int
    created_at_ms: int
    budget: BudgetSnapshot


@dataclass(frozen=True, slots=True)
class NewUser:
    id: str
    email: str
    password_hash: str
    product_id: str
    tenant_id: str
    period_label: str


@dataclass(frozen=True, slots=True)
class CreditGrant:
    grant_id: str
    user_id: str
    amount: Money
    reason: str


def check_grant(snapshot: BudgetSnapshot, existing: CreditGrant | None, grant: CreditGrant) -> bool:
    """Whether ``grant`` is to be written: not when its ``grant_id`` was granted before with the
    same content (a replay, done) and a conflict when with other content; a new grant must keep
    the user's credits within ``core.budget.check_credit``'s bound.

    Both stores decide with this inside the transaction that holds the user's figures.
    """
    if existing is not None:
        if existing != grant:
            raise IdempotencyConflict(
                "grant_id was already used with different content", grant_id=grant.grant_id
            )
        return False
    check_credit(snapshot, grant.amount)
    return True
