"""Read LiteLLM's spend logs over a range of UTC days, page by page.

``GET /spend/logs/v2`` (in the proxies that have it, 1.106.12 among them) pages through the
rows whose ``startTime`` lies in ``[day 00:00, next day 00:00]`` UTC, oldest first,
``LITELLM_PAGE_ROWS`` at a time, until a page comes back short. A proxy without it (404) is
read the old way, ``GET /spend/logs`` with ``summarize=false``: one response a day, at most
``LITELLM_ROWS_PER_RESPONSE_MAX`` rows, no paging, so a day that returns that many is reported
as possibly incomplete. So is everything past ``SPEND_LOGS_MAX`` rows in one read.

Pages are by offset in ``startTime`` order, which LiteLLM does not break ties in: two rows
starting in the same microsecond on either side of a page boundary could swap between two
queries, one read twice and the other missed. A row read twice is kept once (by LiteLLM's
``request_id``, its primary key); missing one needs that coincidence, and the next day's run
reads the day again (``litellm_days`` is 2 by default).

Only the fields the backfill reads are kept (``SPEND_LOG_FIELDS``): a row's metadata can be
kilobytes. Amounts are parsed as decimals (``spend`` is a binary float in LiteLLM), never as
Python floats.
"""

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

import httpx
import simplejson

from core.reconcile import SPEND_LOGS_MAX

LITELLM_ROWS_PER_RESPONSE_MAX = 10_000
LITELLM_PAGE_ROWS = 1_000  # /spend/logs/v2's largest page_size
LITELLM_TIMEOUT_SECONDS = 30.0
LITELLM_DAYS_MAX = 31
# What ``core.reconcile.usage_from_spend_log`` reads of a row.
SPEND_LOG_FIELDS = (
    "request_id",
    "litellm_call_id",
    "status",
    "end_user",
    "user",
    "model_group",
    "model",
    "spend",
    "prompt_tokens",
    "completion_tokens",
)


@dataclass
class SpendLogs:
    entries: list[dict[str, object]]
    days_possibly_incomplete: list[str]


def read_spend_logs(base_url: str, admin_key: str, first_day: date, last_day: date) -> SpendLogs:
    """Every spend-log row of the days ``first_day`` to ``last_day`` (inclusive), up to
    ``SPEND_LOGS_MAX`` rows."""
    days = list(_days(first_day, last_day))
    assert 1 <= len(days) <= LITELLM_DAYS_MAX, (first_day, last_day)
    logs = SpendLogs([], [])
    headers = {"Authorization": f"Bearer {admin_key}"}
    with httpx.Client(
        base_url=base_url, headers=headers, timeout=LITELLM_TIMEOUT_SECONDS
    ) as client:
        paged = True  # until the proxy answers /spend/logs/v2 with 404
        seen: set[object] = set()  # request ids: a row at midnight lies in two days' ranges
        for day in days:
            room = SPEND_LOGS_MAX - len(logs.entries)
            if room <= 0:
                logs.days_possibly_incomplete.append(day.isoformat())
                continue
            read = _read_day_paged(client, day, room) if paged else None
            if read is None:
                paged = False
                read = _read_day_whole(client, day, room)
            rows, complete = read
            for row in rows:
                request_id = row.get("request_id")
                if request_id is not None:
                    if request_id in seen:
                        continue
                    seen.add(request_id)
                logs.entries.append(row)
            if not complete:
                logs.days_possibly_incomplete.append(day.isoformat())
    return logs


def _read_day_paged(
    client: httpx.Client, day: date, rows_max: int
) -> tuple[list[dict[str, object]], bool] | None:
    """The day's rows from ``/spend/logs/v2``, at most ``rows_max``, and whether that was all
    of them; None when the proxy has no such endpoint."""
    rows: list[dict[str, object]] = []
    for page in range(1, rows_max // LITELLM_PAGE_ROWS + 2):
        response = client.get(
            "/spend/logs/v2",
            params={
                "start_date": f"{day.isoformat()} 00:00:00",
                "end_date": f"{(day + timedelta(days=1)).isoformat()} 00:00:00",
                "sort_by": "startTime",
                "sort_order": "asc",
                "page": page,
                "page_size": LITELLM_PAGE_ROWS,
            },
        )
        if response.status_code == 404 and page == 1:
            return None
        answer = _json(response)
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list):
            raise ValueError("/spend/logs/v2 answered without a list of rows in 'data'")
        rows.extend(_kept(row) for row in data if isinstance(row, dict))
        if len(rows) > rows_max:
            return rows[:rows_max], False
        if len(data) < LITELLM_PAGE_ROWS:
            return rows, True
    # Reached only when pages held rows that were not objects: full pages outnumber rows_max.
    return rows[:rows_max], False


def _read_day_whole(
    client: httpx.Client, day: date, rows_max: int
) -> tuple[list[dict[str, object]], bool]:
    """The day's rows from ``/spend/logs``, as many as one response holds (at most
    ``rows_max``), and whether that was all of them."""
    response = client.get(
        "/spend/logs",
        params={
            "start_date": day.isoformat(),
            "end_date": (day + timedelta(days=1)).isoformat(),
            "summarize": "false",
        },
    )
    rows = _json(response)
    if not isinstance(rows, list):
        raise ValueError(f"/spend/logs answered {type(rows).__name__}, not a list")
    kept = [_kept(row) for row in rows if isinstance(row, dict)]
    complete = len(rows) < LITELLM_ROWS_PER_RESPONSE_MAX and len(kept) <= rows_max
    return kept[:rows_max], complete


def _json(response: httpx.Response) -> object:
    response.raise_for_status()
    return simplejson.loads(response.text, parse_float=Decimal)


def _kept(row: Mapping[str, object]) -> dict[str, object]:
    return {field: row[field] for field in SPEND_LOG_FIELDS if field in row}


def _days(first_day: date, last_day: date) -> Iterator[date]:
    day = first_day
    while day <= last_day:
        yield day
        day += timedelta(days=1)
