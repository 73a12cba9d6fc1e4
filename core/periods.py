"""Budget periods: labels are calendar months (``YYYY-MM``) in the budget time zone.

A user's open period starts at provisioning or at the reset that closed the previous one, and
carries the label of the month it started in (or the label a reset was asked to apply). Its end,
as shown to clients, is the first instant of the month after its label: when the monthly reset
is due. Times inside the ledger are integer milliseconds since the Unix epoch (UTC).

Labels run from ``2000-01`` to ``9998-12``, and times the API reads from 2000-01-01 to
9999-01-01 (UTC): every instant the service then writes, a period's end included (the first
instant of the month after its label, in any zone), is an ISO 8601 time with a four-digit year.
"""

import re
import time
from datetime import UTC, date, datetime
from typing import Annotated
from zoneinfo import ZoneInfo

from pydantic import AfterValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

PERIOD_YEAR_MIN = 2000
PERIOD_YEAR_MAX = 9998
# The years PERIOD_YEAR_MIN..PERIOD_YEAR_MAX, written as a pattern so the API's document says
# exactly which labels are accepted.
PERIOD_LABEL_REGEX = (
    r"(2[0-9]{3}|[3-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])"
)
PERIOD_LABEL_PATTERN = re.compile(PERIOD_LABEL_REGEX)
TIME_MS_MIN = int(datetime(PERIOD_YEAR_MIN, 1, 1, tzinfo=UTC).timestamp()) * 1000
TIME_MS_MAX = int(datetime(PERIOD_YEAR_MAX + 1, 1, 1, tzinfo=UTC).timestamp()) * 1000


def label_at(time_ms: int, zone: ZoneInfo) -> str:
    """The label of the calendar month containing ``time_ms`` in ``zone``."""
    local = datetime.fromtimestamp(time_ms / 1000, tz=zone)
    return f"{local.year:04d}-{local.month:02d}"


def parse_label(label: str) -> tuple[int, int]:
    """``"2026-12"`` → ``(2026, 12)``; raises ValueError naming the expected form and years."""
    match = PERIOD_LABEL_PATTERN.fullmatch(label)
    if match is None:
        raise ValueError(
            f"must be a period label YYYY-MM, years {PERIOD_YEAR_MIN} to {PERIOD_YEAR_MAX}"
        )
    return int(match.group(1)), int(match.group(2))


def _checked_label(value: str) -> str:
    try:
        parse_label(value)
    except ValueError as error:
        raise PydanticCustomError("period_label", str(error)) from None
    return value


# A label as the API's models and the flows' parameters take it: checked by parse_label, so a
# refusal says what a label is rather than quoting the pattern; the schema (the API's document,
# the Prefect UI's form) still publishes the pattern.
PeriodLabel = Annotated[
    str,
    AfterValidator(_checked_label),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": f"^{PERIOD_LABEL_REGEX}$",
            "description": f"YYYY-MM, years {PERIOD_YEAR_MIN} to {PERIOD_YEAR_MAX}",
            "examples": ["2026-12"],
        }
    ),
]


def next_label(label: str) -> str:
    """The label of the month after ``label``."""
    year, month = parse_label(label)
    return f"{year + 1:04d}-01" if month == 12 else f"{year:04d}-{month + 1:02d}"


def time_in_range(time_ms: int) -> bool:
    """Whether a time read from a client lies in the years the service writes (see above)."""
    return TIME_MS_MIN <= time_ms <= TIME_MS_MAX


def label_bounds_ms(label: str, zone: ZoneInfo) -> tuple[int, int]:
    """First instant of the label's month and of the month after it, in ``zone``, as ms."""
    year, month = parse_label(label)
    start = datetime(year, month, 1, tzinfo=zone)
    next_year, next_month = (year + 1, 1) if month == 12 else (year, month + 1)
    end = datetime(next_year, next_month, 1, tzinfo=zone)
    return to_ms(start), to_ms(end)


def to_ms(moment: datetime) -> int:
    assert moment.tzinfo is not None, "naive datetimes are ambiguous"
    return int(moment.timestamp() * 1000)


# The last second formatted by iso_from_ms and its text: a hold's expiry is formatted on every
# check that places one, and consecutive holds mostly fall in the same second. A tuple is
# swapped whole, so threads never see a second paired with another second's text.
_last_second_text: tuple[int, str] = (0, "1970-01-01T00:00:00")


def iso_from_ms(time_ms: int) -> str:
    """UTC ISO 8601 with milliseconds and a ``Z``: the one time format of the API."""
    global _last_second_text
    seconds, milliseconds = divmod(time_ms, 1000)
    last_second, text = _last_second_text
    if last_second != seconds:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _last_second_text = (seconds, text)
    return f"{text}.{milliseconds:03d}Z"


def local_day(time_ms: int, zone: ZoneInfo) -> date:
    return datetime.fromtimestamp(time_ms / 1000, tz=zone).date()
