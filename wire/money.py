"""Amounts in the contract: the field types that read a request's money and publish its bounds.

Parsing and rounding are ``core.money``'s; these types only say which bound a field has and how
a refusal is reported.
"""

from collections.abc import Callable
from decimal import Decimal
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from core.money import (
    BUDGET_MAX,
    COST_PER_CALL_MAX,
    MONEY_ZERO,
    NANOS_PER_UNIT,
    Money,
    MoneyError,
    MoneyOutOfRange,
    money_from_input,
    money_to_text,
)


def _money_parser(bound: Money, bound_name: str) -> Callable[[object], Money]:
    """Parse an amount in US dollars of at most ``bound``; past it, ``amount_out_of_range``
    naming the bound (``api.http`` gives that code to the answer)."""

    def parse(value: object) -> Money:
        try:
            return money_from_input(value, bound)
        except MoneyOutOfRange:
            raise PydanticCustomError(
                "amount_out_of_range",
                "must not exceed {bound_name} ({bound})",
                {"bound_name": bound_name, "bound": Decimal(money_to_text(bound))},
            ) from None
        except MoneyError as error:
            raise PydanticCustomError("invalid_amount", str(error)) from None

    return parse


def _money_schema(bound: Money) -> dict[str, object]:
    return {
        "type": "number",
        "minimum": 0,
        "maximum": bound // NANOS_PER_UNIT,
        "description": "US dollars: a JSON number or decimal string, half-even to 9 places",
    }


def _positive(amount: Money) -> Money:
    if amount == MONEY_ZERO:
        raise PydanticCustomError("greater_than", "must be greater than 0")
    return amount


# What one call may cost (a check's estimate, a usage), and what a plan, a tenant cap or a
# credit grant may be (the bounds of core.money).
CostIn = Annotated[
    int,
    BeforeValidator(_money_parser(COST_PER_CALL_MAX, "COST_PER_CALL_MAX")),
    WithJsonSchema(_money_schema(COST_PER_CALL_MAX)),
]
BudgetIn = Annotated[
    int,
    BeforeValidator(_money_parser(BUDGET_MAX, "BUDGET_MAX")),
    WithJsonSchema(_money_schema(BUDGET_MAX)),
]
# An amount that must not round to zero: its least is one nano-dollar (a smaller positive
# amount the server would round up is left out of the document, which stays on the safe side).
PositiveBudgetIn = Annotated[
    BudgetIn,
    AfterValidator(_positive),
    WithJsonSchema({**_money_schema(BUDGET_MAX), "minimum": Decimal(money_to_text(Money(1)))}),
]
MoneyOut = Annotated[
    Decimal, WithJsonSchema({"type": "number", "description": "US dollars, exact"})
]
