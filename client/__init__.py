"""Typed HTTP client of CloudFreedom Billing (httpx, sync and async).

``client.litellm`` holds the LiteLLM proxy callback; it is not imported here, so this package
works without LiteLLM installed.
"""

from client.aio import AsyncBillingClient
from client.calls import RetryPolicy
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
from client.sync import BillingClient
from wire.schemas import (
    CheckBudgetResponse,
    LogUsageResponse,
    ReleaseReservationResponse,
    UserBudgetResponse,
)

__all__ = [
    "AmountOutOfRange",
    "AsyncBillingClient",
    "BillingClient",
    "BillingError",
    "BudgetExceeded",
    "CheckBudgetResponse",
    "Conflict",
    "LogUsageResponse",
    "NotFound",
    "Rejected",
    "ReleaseReservationResponse",
    "RetryPolicy",
    "Unauthorized",
    "Unavailable",
    "UserBudgetResponse",
]
