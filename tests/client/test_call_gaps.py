"""``client.call_gaps.CallGaps``: a user's unused slice stays for a few of their usual gaps
between calls, within the bounds, and only a user calling within that time takes one."""

import pytest

from client.call_gaps import IDLE_GAPS, CallGaps


def gaps(idle_seconds_min: float = 0.5, idle_seconds_max: float = 5.0) -> CallGaps:
    return CallGaps(idle_seconds_min, idle_seconds_max, users_max=10)


def call_every(calls: CallGaps, user_id: str, gap_seconds: float, count: int) -> list[bool]:
    return [calls.called(user_id, index * gap_seconds) for index in range(count)]


def test_a_first_call_is_not_calling_often_and_the_second_goes_by_the_upper_bound() -> None:
    calls = gaps()
    assert calls.called("ada", 100.0) is False
    assert calls.idle_seconds("ada") == 5.0
    assert calls.called("ada", 104.9) is True
    assert calls.called("bob", 100.0) is False
    assert calls.called("bob", 105.0) is False


def test_a_user_calling_about_once_a_second_keeps_a_slice_for_a_few_seconds() -> None:
    calls = gaps()
    assert call_every(calls, "ada", 0.5, 20)[1:] == [True] * 19
    assert calls.idle_seconds("ada") == pytest.approx(IDLE_GAPS * 0.5)


def test_the_idle_time_stays_within_its_bounds() -> None:
    calls = gaps()
    call_every(calls, "fast", 0.01, 50)
    call_every(calls, "slow", 4.0, 50)
    assert calls.idle_seconds("fast") == 0.5
    assert calls.idle_seconds("slow") == 5.0
    assert calls.idle_seconds("never-called") == 5.0


def test_one_long_pause_does_not_set_the_idle_time_alone() -> None:
    calls = gaps()
    call_every(calls, "ada", 0.1, 20)
    assert calls.called("ada", 19 * 0.1 + 2.0) is False
    assert calls.idle_seconds("ada") < 5.0


def test_the_least_recently_called_user_is_forgotten_first() -> None:
    calls = CallGaps(0.5, 5.0, users_max=2)
    calls.called("ada", 0.0)
    calls.called("bob", 0.1)
    calls.called("cy", 0.2)
    assert calls.called("ada", 0.3) is False
    assert calls.called("cy", 0.4) is True


def test_a_lower_bound_above_the_upper_one_is_a_fixed_idle_time() -> None:
    """``BILLING_LEASE_IDLE_MS`` set above ``BILLING_LEASE_IDLE_MS_MAX`` keeps the meaning it had
    before the upper bound existed."""
    calls = gaps(idle_seconds_min=10.0, idle_seconds_max=5.0)
    call_every(calls, "fast", 0.01, 50)
    call_every(calls, "slow", 8.0, 5)
    assert calls.idle_seconds("fast") == calls.idle_seconds("slow") == 10.0
