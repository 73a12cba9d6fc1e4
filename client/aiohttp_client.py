"""The calls of the LiteLLM callback, sent through aiohttp, the HTTP stack the proxy already runs.

Inside a LiteLLM proxy, one check-budget through httpx's async stack cost the proxy about 2 ms of
CPU and left 0.67–0.70× of its throughput; the same call through aiohttp left 0.86–0.95×. Every
other caller uses ``AsyncBillingClient`` (httpx). Requests and answers are the shared ``Call``
objects of ``client.calls``, so both clients read the contract alike.
"""

import aiohttp

from client import calls
from client.aio import retried
from client.base import ClientBase, transport_failure
from client.calls import Call, ResultT

# An idle connection to the service is kept this long (seconds) for the next call.
KEEPALIVE_SECONDS = 30.0


class AiohttpBillingClient(ClientBase):
    """One pooled keep-alive session; create and use it inside one event loop."""

    def __init__(
        self, base_url: str, api_key: str | None = None, admin_key: str | None = None, **options
    ) -> None:
        super().__init__(base_url, api_key, admin_key, **options)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=self.limits.max_connections, keepalive_timeout=KEEPALIVE_SECONDS
            ),
            timeout=aiohttp.ClientTimeout(total=self.timeout_seconds),
        )

    async def aclose(self) -> None:
        await self._session.close()

    async def run(self, call: Call[ResultT]) -> ResultT:
        """Send ``call``; retry connection errors and 5xx up to ``retry.attempts_max`` attempts."""
        url = self.base_url + call.path

        async def attempt() -> ResultT:
            try:
                async with self._session.request(
                    call.method,
                    url,
                    data=call.content(),
                    params=call.params or None,
                    headers=self.headers(call),
                ) as response:
                    status, text = response.status, await response.text()
            except (aiohttp.ClientError, TimeoutError) as error:
                raise transport_failure(call, error) from None
            return calls.parse_answer(call, status, text)

        return await retried(self.retry, attempt)
