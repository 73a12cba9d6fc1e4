"""Domain values as the JSON bodies of the API contract."""

from decimal import Decimal

from core.budget import BudgetSnapshot
from core.money import Money, money_to_decimal
from core.periods import iso_from_ms
from core.store.base import UserView


class _PlainDecimal(Decimal):
    """A Decimal the JSON encoder writes in positional form: 0.000000001, never 1E-9."""

    __slots__ = ()

    def __str__(self) -> str:
        return format(self, "f")


def money_json(amount: Money) -> Decimal:
    """An amount as an exact JSON number."""
    return _PlainDecimal(money_to_decimal(amount))


def budget_json(budget: BudgetSnapshot) -> dict:
    return {
        "total": money_json(budget.total),
        "used": money_json(budget.used),
        "remaining": money_json(budget.remaining),
    }


def user_json(user: UserView) -> dict:
    return {
        "id": user.id,
        "email": user.email,
        "product_id": user.product_id,
        "tenant_id": user.tenant_id,
        "status": user.status.value,
        "budget": budget_json(user.budget),
        "created_at": iso_from_ms(user.created_at_ms),
    }
