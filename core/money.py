"""Money: the one money type of the service and its one rounding rule.

An amount is held as an ``int`` count of nano-dollars (``Money``), so sums and differences are
exact integer arithmetic in Python and in SQL alike. Input is a decimal number; more than
``SCALE_DIGITS`` fractional digits are rounded half-even (LiteLLM sends binary floats such as
0.00022500000000000002). Floats are refused: a float has already lost the exact value.
"""

import re
from decimal import ROUND_HALF_EVEN, Decimal
from typing import NewType

Money = NewType("Money", int)

SCALE_DIGITS = 9
NANOS_PER_UNIT = 10**SCALE_DIGITS
AMOUNT_MAX = Decimal(1_000_000_000)
MONEY_ZERO = Money(0)

_QUANTUM = Decimal(1).scaleb(-SCALE_DIGITS)
# Plain ASCII decimals only: Decimal() alone would also take "1_00" and non-ASCII digits.
_DECIMAL_TEXT = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


class MoneyError(ValueError):
    """An amount that is not a finite, non-negative decimal within ``AMOUNT_MAX``."""


def money_from_input(value: object) -> Money:
    """Parse a JSON number (int or Decimal) or a decimal string into exact nano-dollars."""
    if isinstance(value, bool) or isinstance(value, float):
        raise MoneyError("must be a decimal number (floats are not accepted)")
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, Decimal):
        amount = value
    elif isinstance(value, str):
        if not _DECIMAL_TEXT.fullmatch(value.strip()):
            raise MoneyError("must be a decimal number such as 12.5")
        amount = Decimal(value.strip())
    else:
        raise MoneyError("must be a decimal number")
    if not amount.is_finite():
        raise MoneyError("must be a finite number")
    if amount < 0:
        raise MoneyError("must not be negative")
    if amount > AMOUNT_MAX:
        raise MoneyError(f"must not exceed {AMOUNT_MAX}")
    return Money(int(amount.quantize(_QUANTUM, rounding=ROUND_HALF_EVEN).scaleb(SCALE_DIGITS)))


def money_from_decimal(amount: Decimal) -> Money:
    """Round an exact computed amount (a price times tokens, say) by the money rule."""
    assert amount.is_finite(), amount
    return Money(int(amount.quantize(_QUANTUM, rounding=ROUND_HALF_EVEN).scaleb(SCALE_DIGITS)))


def money_to_text(amount: Money) -> str:
    """The shortest exact positional decimal: ``0.3``, ``12``, ``-0.000000001``."""
    magnitude_units, magnitude_nanos = divmod(abs(amount), NANOS_PER_UNIT)
    sign = "-" if amount < 0 else ""
    if magnitude_nanos == 0:
        return f"{sign}{magnitude_units}"
    return f"{sign}{magnitude_units}.{magnitude_nanos:09d}".rstrip("0")
