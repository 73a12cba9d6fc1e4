"""Rate limits per key and per user: in memory, shared through the real Redis, and Redis down."""

import logging

import pytest

from core.errors import RateLimited, Unavailable
from core.rate_limits import RateLimiter
from core.settings import Settings


class Counts:
    """What the limiter reported: Redis failures and rejections by scope."""

    def __init__(self) -> None:
        self.redis_failures = 0
        self.rejections: list[str] = []

    def redis_failure(self) -> None:
        self.redis_failures += 1

    def rejection(self, scope: str) -> None:
        self.rejections.append(scope)


def limiter(counts: Counts | None = None, **values: object) -> RateLimiter:
    counts = counts or Counts()
    return RateLimiter.from_settings(Settings(**values), counts.redis_failure, counts.rejection)


def test_unconfigured_limits_admit_everything_without_storage():
    unlimited = limiter()
    assert not unlimited.uses_redis
    for _ in range(100):
        unlimited.admit_key()
        unlimited.admit_user("alice")


def test_key_limit_refuses_past_the_limit_with_a_retry_after_in_whole_seconds():
    counts = Counts()
    limited = limiter(counts, rate_limit="3/minute")
    for _ in range(3):
        limited.admit_key()
    with pytest.raises(RateLimited) as refused:
        limited.admit_key()
    assert refused.value.code == "rate_limited"
    assert refused.value.details["scope"] == "key"
    assert 1 <= refused.value.retry_after_seconds <= 60
    assert counts.rejections == ["key"]
    limited.admit_user("alice")  # no per-user limit configured


def test_user_limit_counts_each_user_apart():
    limited = limiter(rate_limit_per_user="2/minute")
    for _ in range(2):
        limited.admit_user("alice")
    with pytest.raises(RateLimited) as refused:
        limited.admit_user("alice")
    assert refused.value.details["scope"] == "user"
    limited.admit_user("bob")
    limited.admit_user("bob")
    for _ in range(10):
        limited.admit_key()


def test_two_limiters_on_one_redis_share_the_limit(redis_url, redis_prefix):
    values = {
        "rate_limit_per_user": "5/minute",
        "redis_url": redis_url,
        "rate_limit_key_prefix": redis_prefix,
    }
    first, second = limiter(**values), limiter(**values)
    assert first.uses_redis and first.redis_healthy()
    for index in range(5):
        (first if index % 2 else second).admit_user("alice")
    for one in (first, second):
        with pytest.raises(RateLimited):
            one.admit_user("alice")
    other = limiter(**{**values, "rate_limit_key_prefix": f"{redis_prefix}-other"})
    other.admit_user("alice")


def test_redis_down_fails_open_by_default_counted_and_logged_once_without_secrets(
    dead_redis_url, caplog
):
    counts = Counts()
    limited = limiter(counts, rate_limit="1/minute", redis_url=dead_redis_url)
    assert not limited.redis_healthy()
    with caplog.at_level(logging.INFO, logger="core.rate_limits"):
        for _ in range(5):
            limited.admit_key()
    assert counts.redis_failures == 5
    assert counts.rejections == []
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "hunter2" not in caplog.text


def test_redis_down_fails_closed_when_configured(dead_redis_url):
    counts = Counts()
    limited = limiter(
        counts,
        rate_limit_per_user="100/second",
        redis_url=dead_redis_url,
        rate_limit_redis_failure="closed",
    )
    for _ in range(3):
        with pytest.raises(Unavailable):
            limited.admit_user("alice")
    assert counts.redis_failures == 3
