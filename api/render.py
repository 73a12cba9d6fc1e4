"""Domain values as the JSON bodies of the API contract."""

from core.budget import BudgetSnapshot
from core.money import money_to_decimal
from core.periods import iso_from_ms
from core.store.base import UserView


def budget_json(budget: BudgetSnapshot) -> dict:
    return {
        "total": money_to_decimal(budget.total),
        "used": money_to_decimal(budget.used),
        "remaining": money_to_decimal(budget.remaining),
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
