"""What each API call sends and how its answer is read; shared by the sync and async clients.

Answers are validated against the service's own response models (``wire.schemas``), so the
client and the server cannot disagree on the contract; every money field is a ``Decimal``.
"""

import json
import random
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Generic, TypeVar
from urllib.parse import quote

import httpx
import simplejson
from pydantic import BaseModel

from client.errors import (
    AmountOutOfRange,
    BillingError,
    BudgetExceeded,
    Conflict,
    NotFound,
    Rejected,
    Unauthorized,
    Unavailable,
)
from wire import schemas

ResultT = TypeVar("ResultT")
Amount = Decimal | int | str

ATTEMPTS_MAX_LIMIT = 10
AMOUNT_OUT_OF_RANGE = "amount_out_of_range"


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries on connection errors and 5xx, with capped exponential backoff and jitter.

    Retrying a write is safe: writes are idempotent by ``request_id``, ``grant_id`` or period
    label. Provisioning is the exception the contract makes: a retry after a lost answer gets
    ``Conflict`` (the email or id is taken), which a caller may read as done.
    """

    attempts_max: int = 3
    backoff_seconds_initial: float = 0.1
    backoff_seconds_max: float = 2.0

    def __post_init__(self) -> None:
        assert 1 <= self.attempts_max <= ATTEMPTS_MAX_LIMIT, self.attempts_max
        assert 0 <= self.backoff_seconds_initial <= self.backoff_seconds_max <= 60

    def delay_seconds(self, attempt: int) -> float:
        """Pause after failed attempt ``attempt`` (1-based): doubling, capped, half jittered."""
        ceiling = min(self.backoff_seconds_max, self.backoff_seconds_initial * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True)
class Call(Generic[ResultT]):
    """One HTTP request to the service and how to turn its answer into ``ResultT``."""

    method: str
    path: str
    admin: bool
    result: type[BaseModel]
    body: dict | None = None
    params: dict[str, str] = field(default_factory=dict)
    denial_raises: bool = False

    def content(self) -> bytes | None:
        if self.body is None:
            return None
        return simplejson.dumps(self.body, use_decimal=True).encode()


def parse(call: Call[ResultT], response: httpx.Response) -> ResultT:
    """The typed result of a 2xx answer, or the typed error of any other."""
    return parse_answer(call, response.status_code, response.text)


def parse_answer(call: Call[ResultT], status: int, text: str) -> ResultT:
    """``parse`` of an answer's status and text, whichever HTTP client received it."""
    body = _json(text)
    if status >= 300:
        raise error_from(status, body)
    result = call.result.model_validate(body)
    if call.denial_raises and not result.allowed:
        raise BudgetExceeded(result)
    return result


def error_from(status: int, body: object) -> BillingError:
    details = body if isinstance(body, dict) else {}
    code = str(details.get("error", "http_error"))
    message = str(details.get("message", f"HTTP {status}"))
    kind = {401: Unauthorized, 404: NotFound, 409: Conflict}.get(status)
    if code == AMOUNT_OUT_OF_RANGE:
        kind = AmountOutOfRange
    elif kind is None:
        kind = Unavailable if status >= 500 else Rejected
    return kind(message, status, code, details)


def _json(text: str) -> object:
    try:
        return json.loads(text, parse_float=Decimal)
    except ValueError:
        return None


def amount(value: Amount) -> Decimal:
    """An exact amount; floats are refused because they have already lost the exact value."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise TypeError(f"amount must be a Decimal, int or decimal string, not {type(value)}")
    return Decimal(value)


def decimal_text(number: float | int | str | None) -> str | None:
    """A reported cost (LiteLLM's binary float) as exact decimal text, or None if unusable.

    A float becomes the text of its repr (0.00022500000000000002); the service rounds it
    half-even to 9 places. None, NaN, infinities and negatives give None: the service then
    prices the call from its own table.
    """
    if number is None or isinstance(number, bool):
        return None
    text = repr(number) if isinstance(number, float) else str(number)
    try:
        value = Decimal(text)
    except ArithmeticError:
        return None
    if not value.is_finite() or value < 0:
        return None
    return text


def _without_none(**fields: object) -> dict:
    return {name: value for name, value in fields.items() if value is not None}


def _user_path(user_id: str, prefix: str, suffix: str = "") -> str:
    return f"{prefix}/users/{quote(user_id, safe='')}{suffix}"


def health() -> Call[schemas.Health]:
    return Call("GET", "/", False, schemas.Health)


def check_budget(
    user_id: str,
    model: str | None,
    tokens_input: int,
    tokens_output: int,
    cost_estimate: Amount | None,
    request_id: str | None,
    denial_raises: bool,
) -> Call[schemas.CheckBudgetResponse]:
    body = _without_none(
        user_id=user_id,
        model=model,
        tokens_input=tokens_input,
        tokens_output=tokens_output,
        cost_estimate=None if cost_estimate is None else amount(cost_estimate),
        request_id=request_id,
    )
    return Call(
        "POST",
        "/api/check-budget",
        False,
        schemas.CheckBudgetResponse,
        body,
        denial_raises=denial_raises,
    )


def log_usage(
    user_id: str,
    model: str,
    request_id: str,
    tokens_input: int,
    tokens_output: int,
    cost_total: Amount | None,
    response_time_ms: int | None,
) -> Call[schemas.LogUsageResponse]:
    body = _without_none(
        user_id=user_id,
        model=model,
        request_id=request_id,
        tokens_input=tokens_input,
        tokens_output=tokens_output,
        cost_total=None if cost_total is None else amount(cost_total),
        response_time=response_time_ms,
    )
    return Call("POST", "/api/log-usage", False, schemas.LogUsageResponse, body)


def log_usage_batch(records: list[dict]) -> Call[schemas.LogUsageBatchResponse]:
    """``records``: each the body of a log-usage (``log_usage(...).body``)."""
    return Call(
        "POST", "/api/log-usage/batch", False, schemas.LogUsageBatchResponse, {"records": records}
    )


def release_reservation(request_id: str) -> Call[schemas.ReleaseReservationResponse]:
    return Call(
        "POST",
        "/api/release-reservation",
        False,
        schemas.ReleaseReservationResponse,
        {"request_id": request_id},
    )


def user_budget(user_id: str) -> Call[schemas.UserBudgetResponse]:
    return Call("GET", _user_path(user_id, "/api", "/budget"), False, schemas.UserBudgetResponse)


def user_usage(
    user_id: str, from_: str | None, to: str | None, group_by: str
) -> Call[schemas.UsageResponse]:
    params = _without_none(**{"from": from_, "to": to, "group_by": group_by})
    return Call(
        "GET", _user_path(user_id, "/api", "/usage"), False, schemas.UsageResponse, params=params
    )


def reset_budgets(period: str | None, force: bool) -> Call[schemas.ResetBudgetsResponse]:
    body = _without_none(period=period, force=force or None)
    return Call("POST", "/api/admin/reset-budgets", True, schemas.ResetBudgetsResponse, body)


def provision_user(
    email: str, password: str, product_id: str, tenant_id: str, user_id: str | None
) -> Call[schemas.ProvisionUserResponse]:
    body = _without_none(
        email=email, password=password, product_id=product_id, tenant_id=tenant_id, user_id=user_id
    )
    return Call("POST", "/api/admin/provision-user", True, schemas.ProvisionUserResponse, body)


def put_product(product_id: str, name: str, monthly_budget: Amount) -> Call[schemas.ProductOut]:
    body = {"id": product_id, "name": name, "monthly_budget": amount(monthly_budget)}
    return Call("POST", "/api/admin/products", True, schemas.ProductOut, body)


def list_products() -> Call[schemas.ProductList]:
    return Call("GET", "/api/admin/products", True, schemas.ProductList)


def put_tenant(tenant_id: str, name: str, monthly_budget: Amount | None) -> Call[schemas.TenantOut]:
    cap = None if monthly_budget is None else amount(monthly_budget)
    body = _without_none(id=tenant_id, name=name, monthly_budget=cap)
    return Call("POST", "/api/admin/tenants", True, schemas.TenantOut, body)


def get_user(user_id: str) -> Call[schemas.UserOut]:
    return Call("GET", _user_path(user_id, "/api/admin"), True, schemas.UserOut)


def update_user(user_id: str, status: str | None, product_id: str | None) -> Call[schemas.UserOut]:
    body = _without_none(status=status, product_id=product_id)
    return Call("PATCH", _user_path(user_id, "/api/admin"), True, schemas.UserOut, body)


def add_credits(
    user_id: str, amount_: Amount, reason: str, grant_id: str | None
) -> Call[schemas.CreditResponse]:
    body = _without_none(amount=amount(amount_), reason=reason, grant_id=grant_id)
    return Call(
        "POST", _user_path(user_id, "/api/admin", "/credits"), True, schemas.CreditResponse, body
    )
