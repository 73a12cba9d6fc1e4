"""The blocking client: one method per API call, typed results, typed errors, bounded retries."""

import time

import httpx

from client import calls
from client.base import ClientBase, transport_failure
from client.calls import Amount, Call, ResultT
from client.errors import BillingError, Unavailable
from wire import schemas


class BillingClient(ClientBase):
    """Thread-safe (httpx.Client is); close it, or use it as a context manager."""

    def __init__(
        self, base_url: str, api_key: str | None = None, admin_key: str | None = None, **options
    ) -> None:
        super().__init__(base_url, api_key, admin_key, **options)
        self._http = httpx.Client(
            base_url=self.base_url, timeout=self.timeout_seconds, limits=self.limits
        )

    def __enter__(self) -> "BillingClient":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def run(self, call: Call[ResultT]) -> ResultT:
        """Send ``call``; retry connection errors and 5xx up to ``retry.attempts_max`` attempts."""
        failure: BillingError | None = None
        for attempt in range(1, self.retry.attempts_max + 1):
            if attempt > 1:
                time.sleep(self.retry.delay_seconds(attempt - 1))
            try:
                response = self._http.request(
                    call.method,
                    call.path,
                    content=call.content(),
                    params=call.params,
                    headers=self.headers(call),
                )
            except httpx.TransportError as error:
                failure = transport_failure(call, error)
                continue
            try:
                return calls.parse(call, response)
            except Unavailable as error:
                failure = error
        assert failure is not None
        raise failure

    def health(self) -> schemas.Health:
        return self.run(calls.health())

    def check_budget(
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
        return self.run(call)

    def reserve(
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
        return self.run(call)

    def log_usage(
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
        return self.run(call)

    def release_reservation(self, request_id: str) -> schemas.ReleaseReservationResponse:
        return self.run(calls.release_reservation(request_id))

    def user_budget(self, user_id: str) -> schemas.UserBudgetResponse:
        return self.run(calls.user_budget(user_id))

    def user_usage(
        self, user_id: str, from_: str | None = None, to: str | None = None, group_by: str = "model"
    ) -> schemas.UsageResponse:
        return self.run(calls.user_usage(user_id, from_, to, group_by))

    def reset_budgets(
        self, period: str | None = None, force: bool = False
    ) -> schemas.ResetBudgetsResponse:
        return self.run(calls.reset_budgets(period, force))

    def provision_user(
        self,
        email: str,
        password: str,
        product_id: str,
        tenant_id: str = "default",
        user_id: str | None = None,
    ) -> schemas.ProvisionUserResponse:
        return self.run(calls.provision_user(email, password, product_id, tenant_id, user_id))

    def put_product(self, product_id: str, name: str, monthly_budget: Amount) -> schemas.ProductOut:
        return self.run(calls.put_product(product_id, name, monthly_budget))

    def list_products(self) -> list[schemas.ProductOut]:
        return self.run(calls.list_products()).products

    def put_tenant(
        self, tenant_id: str, name: str, monthly_budget: Amount | None = None
    ) -> schemas.TenantOut:
        return self.run(calls.put_tenant(tenant_id, name, monthly_budget))

    def get_user(self, user_id: str) -> schemas.UserOut:
        return self.run(calls.get_user(user_id))

    def update_user(
        self, user_id: str, status: str | None = None, product_id: str | None = None
    ) -> schemas.UserOut:
        return self.run(calls.update_user(user_id, status, product_id))

    def add_credits(
        self, user_id: str, amount: Amount, reason: str, grant_id: str | None = None
    ) -> schemas.CreditResponse:
        return self.run(calls.add_credits(user_id, amount, reason, grant_id))
