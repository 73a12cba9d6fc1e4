"""Reading LiteLLM's spend logs (``flows.litellm_spend``) from ``litellm_fake``'s stand-in proxy
(LiteLLM is faked at its HTTP boundary; see that module)."""

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
from litellm_fake import (
    LITELLM_KEY,
    ROWS_PER_RESPONSE_MAX,
    FakeLiteLLM,
    fake_litellm,
    spend_row,
)

from flows import litellm_spend
from flows.litellm_spend import LITELLM_PAGE_ROWS, SPEND_LOG_FIELDS, read_spend_logs

FIRST_DAY = date(2026, 11, 20)
SECOND_DAY = FIRST_DAY + timedelta(days=1)


@pytest.fixture
def litellm() -> Iterator[FakeLiteLLM]:
    with fake_litellm() as fake:
        yield fake


def spend_rows(day: date, count: int, tag: str) -> list[dict]:
    """``count`` rows of ``day``, a few seconds apart, each with metadata the reader drops."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return [
        spend_row(
            f"chatcmpl-{tag}-{number}",
            f"{tag}-{number}",
            (start + timedelta(seconds=3 * number)).isoformat(),
            0.00022500000000000002,
        )
        | {"metadata": {"user_api_key_alias": "a key", "spend_logs_metadata": "x" * 100}}
        for number in range(count)
    ]


def call_ids(entries: list[dict]) -> set[str]:
    return {entry["litellm_call_id"] for entry in entries}


def test_days_of_more_rows_than_a_page_are_read_whole_oldest_first(litellm: FakeLiteLLM):
    busy = spend_rows(FIRST_DAY, 2 * LITELLM_PAGE_ROWS + 345, "busy")
    quiet = spend_rows(SECOND_DAY, 3, "quiet")
    litellm.rows = quiet + busy
    logs = read_spend_logs(litellm.url, LITELLM_KEY, FIRST_DAY, SECOND_DAY)
    assert call_ids(logs.entries) == call_ids(busy + quiet)
    assert len(logs.entries) == len(busy) + len(quiet)
    assert logs.days_possibly_incomplete == []
    assert {field for entry in logs.entries for field in entry} <= set(SPEND_LOG_FIELDS)
    assert [path for path, _ in litellm.queries] == ["/spend/logs/v2"] * 4


def test_a_proxy_without_v2_is_read_a_day_a_response(litellm: FakeLiteLLM):
    litellm.has_v2 = False
    litellm.rows = spend_rows(FIRST_DAY, 5, "one") + spend_rows(SECOND_DAY, 7, "two")
    logs = read_spend_logs(litellm.url, LITELLM_KEY, FIRST_DAY, SECOND_DAY)
    assert call_ids(logs.entries) == call_ids(litellm.rows)
    assert logs.days_possibly_incomplete == []
    # One 404 from v2, then the old endpoint for every day.
    assert [path for path, _ in litellm.queries] == [
        "/spend/logs/v2",
        "/spend/logs",
        "/spend/logs",
    ]


def test_a_day_that_fills_the_old_endpoints_answer_may_be_incomplete(litellm: FakeLiteLLM):
    litellm.has_v2 = False
    litellm.rows = spend_rows(FIRST_DAY, ROWS_PER_RESPONSE_MAX + 1, "full")
    logs = read_spend_logs(litellm.url, LITELLM_KEY, FIRST_DAY, SECOND_DAY)
    assert len(logs.entries) == ROWS_PER_RESPONSE_MAX
    assert logs.days_possibly_incomplete == [FIRST_DAY.isoformat()]


def test_reading_stops_at_spend_logs_max_and_says_which_days_it_left(
    litellm: FakeLiteLLM, monkeypatch
):
    rows_max = LITELLM_PAGE_ROWS + 500
    monkeypatch.setattr(litellm_spend, "SPEND_LOGS_MAX", rows_max)
    litellm.rows = spend_rows(FIRST_DAY, rows_max + 10, "many") + spend_rows(SECOND_DAY, 1, "x")
    logs = read_spend_logs(litellm.url, LITELLM_KEY, FIRST_DAY, SECOND_DAY)
    assert len(logs.entries) == rows_max
    assert logs.days_possibly_incomplete == [FIRST_DAY.isoformat(), SECOND_DAY.isoformat()]
