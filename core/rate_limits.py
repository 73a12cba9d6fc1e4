"""Rate limits per API key and per user (the ``limits`` library); off unless configured.

Counters live in memory (one process) or, with ``REDIS_URL``, in Redis, shared by every process
and machine. The sliding-window-counter strategy costs two counters per limit (no per-hit list,
unlike a moving window) and does not let a burst through at a window boundary (unlike a fixed
window). When Redis fails the configured policy decides (``open``: allow, ``closed``: refuse with
``503``); after a failure Redis is not asked again for ``REDIS_RETRY_SECONDS``, so an outage
costs each request nothing and logs one warning, not one per request.
"""

import logging
import math
import threading
import time
from collections.abc import Callable

from limits import RateLimitItem, parse
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisStorage, Storage, storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

from core.errors import RateLimited, Unavailable
from core.settings import Settings

log = logging.getLogger(__name__)

REDIS_RETRY_SECONDS = 1.0
# Each limit is identified by what it limits, never by a secret: the gateway's key is "api".
GATEWAY_KEY_NAME = "api"


class RateLimiter:
    """Admits or refuses a call per key and per user; thread-safe, one per process."""

    def __init__(
        self,
        per_key: str | None,
        per_user: str | None,
        storage: Storage | None,
        fail_open: bool,
        on_redis_failure: Callable[[], None] = lambda: None,
        on_rejection: Callable[[str], None] = lambda scope: None,
    ) -> None:
        assert storage is not None or (per_key is None and per_user is None)
        self._per_key: RateLimitItem | None = None if per_key is None else parse(per_key)
        self._per_user: RateLimitItem | None = None if per_user is None else parse(per_user)
        self._storage = storage
        self._limiter = None if storage is None else SlidingWindowCounterRateLimiter(storage)
        self._fail_open = fail_open
        self._on_redis_failure = on_redis_failure
        self._on_rejection = on_rejection
        self._redis_retry_at = 0.0
        self._redis_failing = False
        self._state_lock = threading.Lock()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        on_redis_failure: Callable[[], None] = lambda: None,
        on_rejection: Callable[[str], None] = lambda scope: None,
    ) -> "RateLimiter":
        return cls(
            settings.rate_limit,
            settings.rate_limit_per_user,
            open_storage(settings),
            settings.rate_limit_redis_failure == "open",
            on_redis_failure,
            on_rejection,
        )

    @property
    def uses_redis(self) -> bool:
        return isinstance(self._storage, RedisStorage)

    @property
    def fails_open(self) -> bool:
        return self._fail_open

    def redis_healthy(self) -> bool:
        """Whether Redis answers a ping (bounded by its socket timeout); only with Redis."""
        assert isinstance(self._storage, RedisStorage)
        try:
            return bool(self._storage.check())
        except Exception:  # check() should not raise; any failure means "not healthy"
            return False

    def admit_key(self) -> None:
        """Count one call with the gateway's key; raise ``RateLimited`` over the limit."""
        if self._per_key is not None:
            self._admit(self._per_key, "key", GATEWAY_KEY_NAME)

    def admit_user(self, user_id: str) -> None:
        """Count one call for ``user_id``; raise ``RateLimited`` over the limit."""
        if self._per_user is not None:
            self._admit(self._per_user, "user", user_id)

    def _admit(self, item: RateLimitItem, scope: str, identifier: str) -> None:
        assert self._limiter is not None
        if self._redis_retry_at and time.monotonic() < self._redis_retry_at:
            self._redis_down(scope)
            return
        try:
            admitted = self._limiter.hit(item, scope, identifier)
        except StorageError as error:
            self._redis_failed(error)
            self._redis_down(scope)
            return
        if self._redis_failing:
            self._redis_recovered()
        if admitted:
            return
        self._on_rejection(scope)
        raise RateLimited(
            f"rate limit of {item} exceeded for this {scope}",
            scope,
            self._retry_after_seconds(item, scope, identifier),
        )

    def _retry_after_seconds(self, item: RateLimitItem, scope: str, identifier: str) -> int:
        assert self._limiter is not None
        try:
            reset_at = self._limiter.get_window_stats(item, scope, identifier).reset_time
        except StorageError:
            return 1
        return max(1, math.ceil(reset_at - time.time()))

    def _redis_down(self, scope: str) -> None:
        """Redis could not decide: apply the configured policy."""
        self._on_redis_failure()
        if not self._fail_open:
            raise Unavailable(f"rate limit store unavailable; the {scope} limit cannot be checked")

    def _redis_failed(self, error: StorageError) -> None:
        with self._state_lock:
            self._redis_retry_at = time.monotonic() + REDIS_RETRY_SECONDS
            first = not self._redis_failing
            self._redis_failing = True
        if first:
            # The class name only: a driver message may carry the URL, and the URL a password.
            cause = type(error.storage_error).__name__
            policy = "allowing" if self._fail_open else "refusing"
            log.warning(
                "rate limit store unavailable (%s); %s calls until it answers", cause, policy
            )

    def _redis_recovered(self) -> None:
        with self._state_lock:
            was_failing, self._redis_failing = self._redis_failing, False
            self._redis_retry_at = 0.0
        if was_failing:
            log.info("rate limit store answers again")


def open_storage(settings: Settings) -> Storage | None:
    """Redis when ``REDIS_URL`` is set, memory when a limit is set without it, else none."""
    if settings.redis_url is not None:
        timeout_seconds = settings.redis_timeout_ms / 1000
        return storage_from_string(
            settings.redis_url.get_secret_value(),
            key_prefix=settings.rate_limit_key_prefix,
            wrap_exceptions=True,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
        )
    if settings.rate_limit is None and settings.rate_limit_per_user is None:
        return None
    return MemoryStorage()
