"""Who holds a budget: users with their open period's figures, the products and tenants they
belong to, and the credit granted to them. The ledger hands these out and every store returns
them; the rules they obey are in ``core.budget``."""

from dataclasses import dataclass

from core.budget import BudgetSnapshot, UserStatus
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
