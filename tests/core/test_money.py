"""Money is exact nano-dollar integers: decimal input only, half-even to 9 places, exact output."""

import random
from decimal import Decimal

import pytest
import simplejson

from core.money import (
    BUDGET_MAX,
    NANOS_PER_UNIT,
    MoneyError,
    money_from_decimal,
    money_from_input,
    money_to_text,
)


def test_three_tenths_is_exactly_three_tenths():
    assert money_from_input(Decimal("0.1")) * 3 == money_from_input("0.3")
    assert money_from_input("0.3") == 300_000_000


@pytest.mark.parametrize(
    ("given", "nanos"),
    [
        ("0.0000000005", 0),  # tie, rounds to even 0
        ("0.0000000015", 2),  # tie, rounds to even 2
        ("0.0000000025", 2),  # tie, rounds to even 2
        ("0.0000000035", 4),
        ("0.00000000049", 0),
        ("0.00000000051", 1),
        ("0.000000001", 1),
        (Decimal(0.00022500000000000002), 225_000),  # the exact binary value LiteLLM's float holds
        ("0.00022500000000000002", 225_000),
        ("999999999.9999999995", 1_000_000_000 * NANOS_PER_UNIT),
    ],
)
def test_rounds_half_even_to_nine_places(given, nanos):
    assert money_from_input(given) == nanos


def test_json_float_parsed_as_decimal_rounds_to_exact_nanos():
    parsed = simplejson.loads('{"cost": 0.00022500000000000002}', use_decimal=True)["cost"]
    assert isinstance(parsed, Decimal)
    assert money_from_input(parsed) == 225_000


@pytest.mark.parametrize(
    ("given", "nanos"),
    [
        (0, 0),
        (12, 12 * NANOS_PER_UNIT),
        (1_000_000_000, 1_000_000_000 * NANOS_PER_UNIT),
        (Decimal("1.5"), 1_500_000_000),
        (Decimal("1000000000.000000000"), 1_000_000_000 * NANOS_PER_UNIT),
        ("12", 12 * NANOS_PER_UNIT),
        ("0.1", 100_000_000),
        (" 0.25 ", 250_000_000),
        (".5", 500_000_000),
        ("-0", 0),
        ("1e3", 1_000 * NANOS_PER_UNIT),
    ],
)
def test_accepts_ints_decimals_and_decimal_strings(given, nanos):
    result = money_from_input(given)
    assert result == nanos
    assert type(result) is int


@pytest.mark.parametrize(
    "given",
    [
        0.1,
        1.0,
        0.0,
        True,
        False,
        None,
        [1],
        {"amount": 1},
        b"1",
        Decimal("NaN"),
        Decimal("sNaN"),
        Decimal("Infinity"),
        Decimal("-Infinity"),
        "NaN",
        "nan",
        "Infinity",
        "-inf",
        -1,
        Decimal("-0.000000001"),
        Decimal("-0.0000000001"),
        "-1",
        "-0.5",
        1_000_000_001,
        Decimal(BUDGET_MAX).scaleb(-9) + Decimal("0.000000001"),
        "1000000000.000000001",
        "1e10",
        "",
        "   ",
        "abc",
        "1.2.3",
        "0x10",
        "1,5",
        "$1",
        "1 000",
        "12abc",
    ],
)
def test_rejects_anything_but_a_finite_non_negative_bounded_decimal(given):
    with pytest.raises(MoneyError):
        money_from_input(given)


def test_money_error_is_a_value_error():
    assert issubclass(MoneyError, ValueError)


@pytest.mark.parametrize("given", ["1_000", "1_0.5", "١٢", "１２"])
def test_rejects_strings_that_are_not_plain_ascii_decimals(given):
    with pytest.raises(MoneyError):
        money_from_input(given)


@pytest.mark.parametrize(
    ("nanos", "text"),
    [
        (0, "0"),
        (300_000_000, "0.3"),
        (12 * NANOS_PER_UNIT, "12"),
        (1200 * NANOS_PER_UNIT, "1200"),
        (123_456_789_123_456_789, "123456789.123456789"),
        (225_000, "0.000225"),
        (1_500_000_000, "1.5"),
        (-300_000_000, "-0.3"),
        (-12 * NANOS_PER_UNIT, "-12"),
    ],
)
def test_money_to_text_renders_the_shortest_exact_positional_form(nanos, text):
    assert money_to_text(nanos) == text
    assert Decimal(text) == Decimal(nanos).scaleb(-9)


def test_money_to_text_is_positional_for_a_single_nano():
    assert money_to_text(1) == "0.000000001"
    assert money_to_text(-1) == "-0.000000001"


def test_round_trip_through_text_and_json():
    rng = random.Random(20260315)
    samples = [0, 1, 9, 10, 999_999_999, NANOS_PER_UNIT, 1_000_000_000 * NANOS_PER_UNIT]
    samples += [rng.randrange(0, 1_000_000_000 * NANOS_PER_UNIT + 1) for _ in range(500)]
    samples += [rng.randrange(0, 10**6) for _ in range(200)]
    for nanos in samples:
        text = money_to_text(nanos)
        assert money_from_input(text) == nanos
        as_json = simplejson.dumps({"amount": simplejson.RawJSON(text)})
        assert money_from_input(simplejson.loads(as_json, use_decimal=True)["amount"]) == nanos


@pytest.mark.parametrize(
    ("computed", "nanos"),
    [
        (Decimal("0.0000025") * 10 + Decimal("0.00001") * 20, 225_000),
        (Decimal("0.0000000005"), 0),
        (Decimal("0.0000000015"), 2),
        (Decimal("1.0000000025"), 1_000_000_002),
    ],
)
def test_money_from_decimal_uses_the_same_rounding_rule(computed, nanos):
    assert money_from_decimal(computed) == nanos
