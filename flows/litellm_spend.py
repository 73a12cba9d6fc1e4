"""Read LiteLLM's spend logs (``GET /spend/logs``) over a range of UTC days, one request a day.

With ``start_date`` and ``end_date`` (``YYYY-MM-DD``) and ``summarize=false`` the proxy returns
the individual rows whose ``startTime`` lies in ``[start_date 00:00, end_date 00:00]`` UTC, newest
first, at most ``LITELLM_ROWS_PER_RESPONSE_MAX`` of them; it offers no paging on this endpoint.
A day that returns that many rows is reported as possibly incomplete. Amounts are parsed as
decimals (``spend`` is a binary float in LiteLLM), never as Python floats.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

import httpx
import simplejson

LITELLM_ROWS_PER_RESPONSE_MAX = 10_000
LITELLM_TIMEOUT_SECONDS = 30.0
LITELLM_DAYS_MAX = 31


@dataclass
class SpendLogs:
    entries: list[dict[str, object]]
    days_possibly_incomplete: list[str]


def read_spend_logs(base_url: str, admin_key: str, first_day: date, last_day: date) -> SpendLogs:
    """Every spend-log row of the days ``first_day`` to ``last_day`` (inclusive)."""
    days = list(_days(first_day, last_day))
    assert 1 <= len(days) <= LITELLM_DAYS_MAX, (first_day, last_day)
    entries: list[dict[str, object]] = []
    incomplete: list[str] = []
    headers = {"Authorization": f"Bearer {admin_key}"}
    with httpx.Client(
        base_url=base_url, headers=headers, timeout=LITELLM_TIMEOUT_SECONDS
    ) as client:
        for day in days:
            response = client.get(
                "/spend/logs",
                params={
                    "start_date": day.isoformat(),
                    "end_date": (day + timedelta(days=1)).isoformat(),
                    "summarize": "false",
                },
            )
            response.raise_for_status()
            rows = simplejson.loads(response.text, parse_float=Decimal)
            if not isinstance(rows, list):
                raise ValueError(f"/spend/logs answered {type(rows).__name__}, not a list")
            entries.extend(row for row in rows if isinstance(row, dict))
            if len(rows) >= LITELLM_ROWS_PER_RESPONSE_MAX:
                incomplete.append(day.isoformat())
    return SpendLogs(entries, incomplete)


def _days(first_day: date, last_day: date) -> Iterator[date]:
    day = first_day
    while day <= last_day:
        yield day
        day += timedelta(days=1)
