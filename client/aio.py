"""The asyncio client: the same calls as ``BillingClient``, awaited; for LiteLLM's event loop."""

import asyncio
from collections.abc import Awaitable, Callable

import httpx

from client import calls
from client.base import ClientBase, transport_failure
from client.calls import Amount, Call, ResultT, RetryPolicy
from client.errors import BillingError, Unavailable
from wire import schemas


class AsyncBillingClient(ClientBase):
    """Use it inside one event loop; ``await aclose()`` it, or ``async with`` it."""

    def __init__(
        self, base_url: str, api_key: str | None = None, admin_key: str | None = None, **options
    ) -> None:
        super().__init__(base_url, api_key, admin_key, **options)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=self.timeout_seconds, limits=self.limits
        )

    async def __aenter__(self) -> "AsyncBillingClient":
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def run(self, call: Call[ResultT]) -> ResultT:
        """Send ``call``; retry connection errors and 5xx up to ``retry.attempts_max`` attempts."""

        async def attempt() -> ResultT:
            try:
                response = await self._http.request(
                    call.method,
                    call.path,
                    content=call.content(),
                    params=call.params,
                    headers=self.headers(call),
                )
            except httpx.TransportError as error:
                raise transport_failure(call, error) from None
            return calls.parse(call, response)

        return await retried(self.retry, attempt)

    async def health(self) -> schemas.Health:
        return await self.run(calls.health())

    async def check_budget(
        self,
        user_id: str,
        model: str | None = None,
        tokens_input: int = 0,
        tokens_output: int = 0,
        cost_estimate: Amount | None = None,
        request_id: str | None = None,
    ) -> schemas.CheckBudgetResponse:
        """May ``user_id`` spend about this much? A denial is an answer here, not an error."""
        call = calls.check_budget(
            user_id, model, tokens_input, tokens_output, cost_estimate, request_id, False
        )
        return await self.run(call)

    async def reserve(
        self,
        user_id: str,
        request_id: str,
        cost_estimate: Amount | None = None,
        model: str | None = None,
        tokens_input: int = 0,
        tokens_output: int = 0,
    ) -> schemas.CheckBudgetResponse:
        """Place a hold for ``request_id``; raises ``BudgetExceeded`` when there is no room."""
        call = calls.check_budget(
            user_id, model, tokens_input, tokens_output, cost_estimate, request_id, True
        )
        return await self.run(call)

    async def log_usage(
        self,
        user_id: str,
        model: str,
        request_id: str,
        tokens_input: int = 0,
        tokens_output: int = 0,
        cost_total: Amount | None = None,
        response_time_ms: int | None = None,
    ) -> schemas.LogUsageResponse:
        call = calls.log_usage(
            user_id, model, request_id, tokens_input, tokens_output, cost_total, response_time_ms
        )
        return await self.run(call)

    async def release_reservation(self, request_id: str) -> schemas.ReleaseReservationResponse:
        return await self.run(calls.release_reservation(request_id))

    async def user_budget(self, user_id: str) -> schemas.UserBudgetResponse:
        return await self.run(calls.user_budget(user_id))

    async def user_usage(
        self, user_id: str, from_: str | None = None, to: str | None = None, group_by: str = "model"
    ) -> schemas.UsageResponse:
        return await self.run(calls.user_usage(user_id, from_, to, group_by))

    async def reset_budgets(
        self, period: str | None = None, force: bool = False
    ) -> schemas.ResetBudgetsResponse:
        return await self.run(calls.reset_budgets(period, force))

    async def provision_user(
        self,
        email: str,
        password: str,
        product_id: str,
        tenant_id: str = "default",
        user_id: str | None = None,
    ) -> schemas.ProvisionUserResponse:
        return await self.run(calls.provision_user(email, password, product_id, tenant_id, user_id))

    async def put_product(
        self, product_id: str, name: str, monthly_budget: Amount
    ) -> schemas.ProductOut:
        return await self.run(calls.put_product(product_id, name, monthly_budget))

    async def list_products(self) -> list[schemas.ProductOut]:
        return (await self.run(calls.list_products())).products

    async def put_tenant(
        self, tenant_id: str, name: str, monthly_budget: Amount | None = None
    ) -> schemas.TenantOut:
        return await self.run(calls.put_tenant(tenant_id, name, monthly_budget))

    async def get_user(self, user_id: str) -> schemas.UserOut:
        return await self.run(calls.get_user(user_id))

    async def update_user(
        self, user_id: str, status: str | None = None, product_id: str | None = None
    ) -> schemas.UserOut:
        return await self.run(calls.update_user(user_id, status, product_id))

    async def add_credits(
        self, user_id: str, amount: Amount, reason: str, grant_id: str | None = None
    ) -> schemas.CreditResponse:
        return await self.run(calls.add_credits(user_id, amount, reason, grant_id))


async def retried(retry: RetryPolicy, attempt: Callable[[], Awaitable[ResultT]]) -> ResultT:
    """``attempt()``, again after each ``Unavailable`` (a connection error or a 5xx) up to
    ``retry.attempts_max`` attempts in all, pausing ``retry.delay_seconds`` between them."""
    failure: BillingError | None = None
    for number in range(1, retry.attempts_max + 1):
        if number > 1:
            await asyncio.sleep(retry.delay_seconds(number - 1))
        try:
            return await attempt()
        except Unavailable as error:
            failure = error
    assert failure is not None
    raise failure
