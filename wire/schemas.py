"""Request and response models of the HTTP API; the OpenAPI document is generated from them.

The server validates requests with these models and renders responses as plain dicts for speed;
the tests check those responses against these models, and the client reads answers with them.
"""

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from core.identifiers import EMAIL_PATTERN, ID_LENGTH_MAX
from core.periods import PeriodLabel
from wire.money import BudgetIn, CostIn, MoneyOut, PositiveBudgetIn

TOKENS_MAX = 1_000_000_000
TEXT_LENGTH_MAX = 1024

Identifier = Annotated[str, Field(min_length=1, max_length=ID_LENGTH_MAX)]


def _whole_count(value: object) -> object:
    """Bound a JSON number before it becomes an int: int(Decimal("1e999999999")) takes minutes."""
    if isinstance(value, Decimal):
        if not value.is_finite() or value < 0 or value > TOKENS_MAX:
            raise PydanticCustomError(
                "token_count", "must be a whole number from 0 to {limit}", {"limit": TOKENS_MAX}
            )
        if value != value.to_integral_value():
            raise PydanticCustomError("token_count", "must be a whole number")
        return int(value)
    return value


# Strict: a lax int would take true as 1 and "5" as 5.
Tokens = Annotated[int, BeforeValidator(_whole_count), Strict(), Field(ge=0, le=TOKENS_MAX)]
RESPONSE_TIME_MS_MAX = 86_400_000
# A decimal string is accepted too, as for amounts; the document names only the number, since
# pydantic would publish any string as valid.
ResponseTime = Annotated[
    Decimal,
    Field(ge=0, le=RESPONSE_TIME_MS_MAX, allow_inf_nan=False),
    WithJsonSchema({"type": "number", "minimum": 0, "maximum": RESPONSE_TIME_MS_MAX}),
]


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class CheckBudgetRequest(Request):
    user_id: Identifier
    model: Annotated[str, Field(max_length=ID_LENGTH_MAX)] | None = None
    tokens_input: Tokens = 0
    tokens_output: Tokens = 0
    cost_estimate: CostIn | None = None
    request_id: Identifier | None = None


class LogUsageRequest(Request):
    user_id: Identifier
    model: Annotated[str, Field(min_length=1, max_length=ID_LENGTH_MAX)]
    request_id: Identifier
    tokens_input: Tokens = 0
    tokens_output: Tokens = 0
    cost_total: CostIn | None = None
    response_time: ResponseTime | None = Field(None, description="milliseconds")


LOG_USAGE_BATCH_RECORDS_MAX = 1_000


class LogUsageBatchRequest(Request):
    records: Annotated[
        list[LogUsageRequest], Field(min_length=1, max_length=LOG_USAGE_BATCH_RECORDS_MAX)
    ]


class ReleaseReservationRequest(Request):
    request_id: Identifier


class ResetBudgetsRequest(Request):
    """Without ``period``, close every open period now; with it, the guarded monthly reset."""

    period: PeriodLabel | None = None
    force: StrictBool = Field(
        False,
        description="apply a period the reset rule refuses (a future month, one not later than"
        " the open periods) and close every open period; logged and mailed to the admin",
    )


class ProvisionUserRequest(Request):
    email: Annotated[str, Field(min_length=3, max_length=320, pattern=EMAIL_PATTERN)]
    password: Annotated[str, Field(min_length=8, max_length=1024)]
    product_id: Identifier
    tenant_id: Identifier = "default"
    user_id: Identifier | None = None
    create_tenant: StrictBool = Field(
        True,
        description="create tenant_id with the user when it does not exist (the original"
        " behaviour); false refuses an unknown tenant with 422 naming it. The tenant"
        " `default` is always created on first use",
    )


class UserByEmailQuery(Request):
    """The query of ``GET /api/admin/users``: one email, compared case-insensitively."""

    email: Annotated[
        str,
        Field(
            min_length=3,
            max_length=320,
            pattern=EMAIL_PATTERN,
            description="the user's email, compared case-insensitively",
        ),
    ]


class ProductRequest(Request):
    id: Identifier
    name: Annotated[str, Field(min_length=1, max_length=TEXT_LENGTH_MAX)]
    monthly_budget: BudgetIn


class TenantRequest(Request):
    id: Identifier
    name: Annotated[str, Field(min_length=1, max_length=TEXT_LENGTH_MAX)]
    monthly_budget: BudgetIn | None = None


class UserPatchRequest(Request):
    """At least one of status and product_id, not null."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["status"], "properties": {"status": {"type": "string"}}},
                {"required": ["product_id"], "properties": {"product_id": {"type": "string"}}},
            ]
        }
    )

    status: Literal["active", "suspended"] | None = None
    product_id: Identifier | None = None


UsageTime = Annotated[
    str,
    Field(
        description="a date (midnight in BUDGET_TIMEZONE) or an ISO 8601 time (without an"
        " offset: in BUDGET_TIMEZONE)",
        json_schema_extra={"anyOf": [{"format": "date"}, {"format": "date-time"}]},
    ),
]


class UsageQuery(Request):
    """The query of ``GET /api/users/{id}/usage``; the times are read in the budget zone."""

    from_: UsageTime | None = Field(None, alias="from")
    to: UsageTime | None = None
    group_by: Literal["model", "day"] = "model"


class CreditRequest(Request):
    amount: PositiveBudgetIn
    reason: Annotated[str, Field(min_length=1, max_length=TEXT_LENGTH_MAX)]
    grant_id: Identifier | None = Field(None, description="idempotency key: a retry adds nothing")


# -- responses -------------------------------------------------------------------------------


class Budget(BaseModel):
    total: MoneyOut
    used: MoneyOut
    remaining: MoneyOut


class BudgetWithReserved(Budget):
    reserved: MoneyOut


class ReservationOut(BaseModel):
    request_id: str
    amount: MoneyOut
    expires_at: str


class CheckBudgetResponse(BaseModel):
    allowed: bool
    budget: Budget
    status: Literal["active", "exceeded", "suspended", "tenant_exceeded", "not_found"]
    message: str
    reservation: ReservationOut | None = None


class LogUsageResponse(BaseModel):
    message: str
    result: Literal["created", "exists"]
    budget: Budget


class LogUsageBatchResult(BaseModel):
    """One record's answer, as POST /api/log-usage would have given it."""

    request_id: str
    status: int = Field(description="201 created, 200 identical replay, or the error's status")
    result: Literal["created", "exists", "error"]
    error: str | None = Field(None, description="the stable error code when result is error")
    message: str | None = None


class LogUsageBatchResponse(BaseModel):
    results: list[LogUsageBatchResult] = Field(description="one per record, in request order")


class ReleaseReservationResponse(BaseModel):
    request_id: str
    released: MoneyOut


class ResetBudgetsResponse(BaseModel):
    message: str
    users_reset: int
    period: str
    already_done: bool


class UserOut(BaseModel):
    id: str
    email: str
    product_id: str
    tenant_id: str
    status: Literal["active", "suspended"]
    budget: Budget
    created_at: str


class ProvisionUserResponse(BaseModel):
    message: str
    user: UserOut


class ProductOut(BaseModel):
    id: str
    name: str
    monthly_budget: MoneyOut


class ProductList(BaseModel):
    products: list[ProductOut]


class TenantOut(BaseModel):
    id: str
    name: str
    monthly_budget: MoneyOut | None


class CreditResponse(BaseModel):
    result: Literal["created", "exists"]
    grant_id: str
    user: UserOut


class Period(BaseModel):
    label: str
    start: str
    end: str


class UserBudgetResponse(BaseModel):
    user_id: str
    status: Literal["active", "suspended"]
    budget: BudgetWithReserved
    period: Period


class UsageGroupOut(BaseModel):
    key: str
    requests: int
    tokens_input: int
    tokens_output: int
    cost: MoneyOut


class UsageResponse(BaseModel):
    user_id: str
    from_: str = Field(alias="from")
    to: str
    group_by: Literal["model", "day"]
    groups: list[UsageGroupOut]
    total: UsageGroupOut


class Health(BaseModel):
    status: Literal["ok", "error"]
    version: str
    database: Literal["ok", "error"]
    redis: Literal["ok", "error"] | None = Field(None, description="only when REDIS_URL is set")
    error: str | None = Field(None, description="set when unhealthy: unavailable")
    message: str | None = None


class Error(BaseModel):
    error: str = Field(description="stable code: validation_error, not_found, …")
    message: str
    field: str | None = None
    bound: MoneyOut | None = Field(
        None, description="amount_out_of_range: the bound (US dollars) the amount would pass"
    )


class ResetRefusedError(Error):
    error: Literal["reset_refused"]
    reason: Literal["future_period", "earlier_than_open_periods", "nothing_due"]
    period: str
    valid_period: str = Field(description="the label an unforced reset could apply next")


class CheckBudgetNotFound(Error):
    allowed: Literal[False]
    budget: Budget
    status: Literal["not_found"]
