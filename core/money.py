"""Money: the one money type of the service, its one rounding rule, and its bounds.

An amount is held as an ``int`` count of nano-dollars (``Money``), so sums and differences are
exact integer arithmetic in Python and in SQL alike. Input is a decimal number; more than
``SCALE_DIGITS`` fractional digits are rounded half-even (LiteLLM sends binary floats such as
0.00022500000000000002). Floats are refused: a float has already lost the exact value.

Bounds. Both databases keep money in 64-bit signed integers (SQLite INTEGER, PostgreSQL
BIGINT): at most 9,223,372,036.854775807 dollars. Every amount the API takes and every counter
the ledger keeps has a bound far inside that, so no sequence of accepted requests can overflow
a counter or any sum a write computes, on either store:

- ``COST_PER_CALL_MAX`` ($1,000,000): the largest cost one call may estimate (a check, a hold)
  or log, given by the gateway or priced from the table. A call of a million tokens at the
  dearest list prices costs hundreds of dollars; a cost past this is a bug or an attack.
- ``BUDGET_MAX`` ($1,000,000,000): the largest plan budget, tenant cap and single credit grant.
- ``COUNTER_MAX`` ($1,000,000,000): the largest value of the counters that grow with each
  write: a user's ``used`` and ``credits``, a tenant's ``used``. A usage or a credit that would
  take one past it is refused with ``422 amount_out_of_range`` and writes nothing; a check whose
  hold would take a user's or tenant's ``used`` plus active holds past it is denied, so the
  ``held`` counters stay within it too (plus holds past their expiry that the sweep, every
  250 ms, has not yet closed). The schema refuses any write that grows one of those counters
  past its bound, whatever code path attempts it.

With every figure at most 10**18 nano-dollars, the widest expression a write computes,
``budget + credits - used - held``, stays within ±2 * 10**18, under a quarter of the range.
Sums over many users or periods are reads, not counters, and these bounds do not cap them:
PostgreSQL adds BIGINTs as NUMERIC and Python's integers do not overflow; SQLite's SUM fails
past 2**63 instead, so its usage view adds whole dollars and the nano-dollars under them apart.
"""

import re
from decimal import ROUND_HALF_EVEN, Decimal
from functools import cache
from typing import NewType

Money = NewType("Money", int)

SCALE_DIGITS = 9
NANOS_PER_UNIT = 10**SCALE_DIGITS
MONEY_ZERO = Money(0)
COST_PER_CALL_MAX = Money(1_000_000 * NANOS_PER_UNIT)
BUDGET_MAX = Money(1_000_000_000 * NANOS_PER_UNIT)
COUNTER_MAX = Money(1_000_000_000 * NANOS_PER_UNIT)

_QUANTUM = Decimal(1).scaleb(-SCALE_DIGITS)
# Plain ASCII decimals only: Decimal() alone would also take "1_00" and non-ASCII digits.
_DECIMAL_TEXT = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


class MoneyError(ValueError):
    """An amount that is not a finite, non-negative decimal within its bound."""


class MoneyOutOfRange(MoneyError):
    """A well-formed amount past its bound; ``bound`` says which."""

    def __init__(self, bound: Money) -> None:
        super().__init__(f"must not exceed {money_to_text(bound)}")
        self.bound = bound


def money_from_input(value: object, bound: Money = BUDGET_MAX) -> Money:
    """Parse a JSON number (int or Decimal) or a decimal string into exact nano-dollars.

    ``bound`` is the largest amount the caller takes; the default is the largest any input is.
    """
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
    # Compared before rounding: quantizing 1e999999999 would fail, and take its time doing so.
    if amount > _units(bound):
        raise MoneyOutOfRange(bound)
    return Money(int(amount.quantize(_QUANTUM, rounding=ROUND_HALF_EVEN).scaleb(SCALE_DIGITS)))


@cache
def _units(amount: Money) -> Decimal:
    """An amount in dollars, exact; kept, since every parse compares against its bound."""
    return Decimal(amount).scaleb(-SCALE_DIGITS)


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
