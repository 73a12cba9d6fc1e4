"""Period labels are calendar months in the budget zone; bounds, parsing and ISO times are exact."""

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest
from core_helpers import ms

from core.periods import iso_from_ms, label_at, label_bounds_ms, local_day, parse_label

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
UTC_ZONE = ZoneInfo("UTC")


def test_label_at_uses_the_budget_zone_at_a_month_boundary():
    moment = ms(datetime(2026, 11, 30, 23, 30, tzinfo=UTC))
    assert label_at(moment, BERLIN) == "2026-12"
    assert label_at(moment, UTC_ZONE) == "2026-11"


def test_label_at_behind_utc_crosses_the_year_backwards():
    moment = ms(datetime(2027, 1, 1, 3, 0, tzinfo=UTC))
    assert label_at(moment, NEW_YORK) == "2026-12"
    assert label_at(moment, UTC_ZONE) == "2027-01"


def test_label_at_last_and_first_millisecond_of_a_month():
    start, _ = label_bounds_ms("2026-12", BERLIN)
    assert label_at(start - 1, BERLIN) == "2026-11"
    assert label_at(start, BERLIN) == "2026-12"


@pytest.mark.parametrize(
    ("label", "zone", "start", "end"),
    [
        (
            "2026-12",
            BERLIN,
            datetime(2026, 11, 30, 23, tzinfo=UTC),
            datetime(2026, 12, 31, 23, tzinfo=UTC),
        ),
        # March in Berlin starts in winter time (+01) and ends in summer time (+02)
        (
            "2026-03",
            BERLIN,
            datetime(2026, 2, 28, 23, tzinfo=UTC),
            datetime(2026, 3, 31, 22, tzinfo=UTC),
        ),
        ("2026-12", UTC_ZONE, datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
        ("2028-02", UTC_ZONE, datetime(2028, 2, 1, tzinfo=UTC), datetime(2028, 3, 1, tzinfo=UTC)),
        (
            "2026-01",
            NEW_YORK,
            datetime(2026, 1, 1, 5, tzinfo=UTC),
            datetime(2026, 2, 1, 5, tzinfo=UTC),
        ),
    ],
)
def test_label_bounds_ms(label, zone, start, end):
    assert label_bounds_ms(label, zone) == (ms(start), ms(end))


@pytest.mark.parametrize(
    ("label", "parsed"),
    [
        ("2026-12", (2026, 12)),
        ("2000-01", (2000, 1)),
        ("9998-12", (9998, 12)),
        ("2026-09", (2026, 9)),
    ],
)
def test_parse_label_accepts_yyyy_mm(label, parsed):
    assert parse_label(label) == parsed


@pytest.mark.parametrize(
    "label",
    [
        "",
        "0001-01",
        "1999-12",
        "9999-01",
        "2026-13",
        "2026-00",
        "2026-1",
        "26-01",
        "2026/01",
        "2026-01-01",
        " 2026-01",
        "2026-01 ",
        "202a-01",
        "2026-１2",
        "12-2026",
    ],
)
def test_parse_label_rejects_bad_labels(label):
    with pytest.raises(ValueError, match="YYYY-MM"):
        parse_label(label)
    with pytest.raises(ValueError):
        label_bounds_ms(label, UTC_ZONE)


@pytest.mark.parametrize("label", ["2026-01\n", "２０２６-01"])
def test_parse_label_accepts_only_the_canonical_spelling(label):
    with pytest.raises(ValueError):
        parse_label(label)


@pytest.mark.parametrize(
    ("time_ms", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (ms(datetime(2026, 11, 30, 23, 30, tzinfo=UTC)), "2026-11-30T23:30:00.000Z"),
        (ms(datetime(2026, 11, 30, 23, 30, tzinfo=UTC)) + 7, "2026-11-30T23:30:00.007Z"),
        (ms(datetime(2026, 3, 15, 12, tzinfo=UTC)) + 999, "2026-03-15T12:00:00.999Z"),
        (-1, "1969-12-31T23:59:59.999Z"),
    ],
)
def test_iso_from_ms_is_utc_with_milliseconds_and_z(time_ms, text):
    assert iso_from_ms(time_ms) == text


def test_iso_from_ms_is_right_when_seconds_alternate():
    """The last formatted second is reused; a different second must never get its text."""
    first = ms(datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC))
    for time_ms in (first, first + 1, first + 1_000, first + 999, first - 1, first + 86_400_000):
        expected = datetime.fromtimestamp(time_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
        assert iso_from_ms(time_ms) == expected.replace("+00:00", "Z")


def test_iso_from_ms_ignores_the_local_zone_of_the_moment():
    berlin_midnight = ms(datetime(2026, 12, 1, tzinfo=BERLIN))
    assert iso_from_ms(berlin_midnight) == "2026-11-30T23:00:00.000Z"


def test_local_day_in_zone():
    moment = ms(datetime(2026, 11, 30, 23, 30, tzinfo=UTC))
    assert local_day(moment, BERLIN) == date(2026, 12, 1)
    assert local_day(moment, UTC_ZONE) == date(2026, 11, 30)
