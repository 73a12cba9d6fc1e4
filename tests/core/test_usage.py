"""Usage replay rule: an identical replay is accepted, any difference in content conflicts."""

import dataclasses

import pytest

from core.errors import IdempotencyConflict
from core.usage import UsageRecord, check_replay

RECORD = UsageRecord("req-1", "u1", "gpt-4o", 10, 20, 225_000)


def test_identical_replay_is_accepted():
    assert check_replay(RECORD, dataclasses.replace(RECORD)) is None


@pytest.mark.parametrize(
    "change",
    [
        {"user_id": "u2"},
        {"model": "gpt-4o-mini"},
        {"tokens_input": 11},
        {"tokens_output": 21},
        {"cost": 225_001},
    ],
)
def test_any_difference_conflicts(change):
    with pytest.raises(IdempotencyConflict) as caught:
        check_replay(RECORD, dataclasses.replace(RECORD, **change))
    assert caught.value.details == {"request_id": "req-1"}


def test_response_time_is_not_part_of_the_record():
    assert "response_time_ms" not in {field.name for field in dataclasses.fields(UsageRecord)}
