"""Domain values as the JSON bodies of the API contract."""

from simplejson import RawJSON

from core.budget import BudgetSnapshot
from core.money import Money, money_to_text
from core.periods import iso_from_ms
from core.store.base import UserView


def money_json(amount: Money) -> RawJSON:
    """An amount as an exact JSON number, written as the money module spells it."""
    return RawJSON(money_to_text(amount))


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
