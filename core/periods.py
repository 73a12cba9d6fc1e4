"""Budget periods: labels are calendar months (``YYYY-MM``) in the budget time zone.

A user's open period starts at provisioning or at the reset that closed the previous one, and
carries the label of the month it started in (or the label a reset was asked to apply). Its end,
as shown to clients, is the first instant of the month after its label: when the monthly reset
is due. Times inside the ledger are integer milliseconds since the Unix epoch (UTC).
"""

import re
import time
from datetime import date, datetime
from zoneinfo import ZoneInfo

PERIOD_LABEL_PATTERN = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")


def label_at(time_ms: int, zone: ZoneInfo) -> str:
    """The label of the calendar month containing ``time_ms`` in ``zone``."""
    local = datetime.fromtimestamp(time_ms / 1000, tz=zone)
    return f"{local.year:04d}-{local.month:02d}"


def parse_label(label: str) -> tuple[int, int]:
    """``"2026-12"`` → ``(2026, 12)``; raises ValueError naming the expected form."""
    match = PERIOD_LABEL_PATTERN.fullmatch(label)
    if match is None:
        raise ValueError("must be a period label of the form YYYY-MM")
    return int(match.group(1)), int(match.group(2))


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
