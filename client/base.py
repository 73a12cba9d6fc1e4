"""Settings shared by the sync and async clients: where the service is, keys, limits."""

import httpx

from client.calls import Call, RetryPolicy
from client.errors import BillingError, Unavailable

TIMEOUT_SECONDS_DEFAULT = 5.0
CONNECTIONS_MAX_DEFAULT = 100


class ClientBase:
    """Base URL, keys (never logged), timeout and retry policy; builds each request's headers."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        admin_key: str | None = None,
        *,
        timeout_seconds: float = TIMEOUT_SECONDS_DEFAULT,
        retry: RetryPolicy | None = None,
        connections_max: int = CONNECTIONS_MAX_DEFAULT,
    ) -> None:
        assert 0 < timeout_seconds <= 300, timeout_seconds
        assert 1 <= connections_max <= 10_000, connections_max
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._admin_key = admin_key
        self.timeout_seconds = timeout_seconds
        self.retry = retry or RetryPolicy()
        self.limits = httpx.Limits(
            max_connections=connections_max, max_keepalive_connections=connections_max
        )

    def headers(self, call: Call) -> dict[str, str]:
        key = self._admin_key if call.admin else self._api_key
        if key is None:
            which = "admin_key" if call.admin else "api_key"
            raise BillingError(f"{call.method} {call.path} needs the client's {which}")
        header = "X-Admin-Key" if call.admin else "X-API-Key"
        return {header: key, "Content-Type": "application/json", "Accept": "application/json"}


def transport_failure(call: Call, error: Exception) -> Unavailable:
    """A connection error or timeout (httpx's or aiohttp's) as ``Unavailable`` (the key is in no
    message)."""
    return Unavailable(f"{call.method} {call.path}: {type(error).__name__}: {error}")
