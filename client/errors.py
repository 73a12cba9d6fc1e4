"""Typed errors of the billing client; each carries the HTTP status, stable code and body."""

from wire.schemas import CheckBudgetResponse


class BillingError(Exception):
    """Base of every error the client raises; ``code`` is the service's stable error code."""

    def __init__(
        self, message: str, status: int | None = None, code: str = "", body: object = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.body = body


class BudgetExceeded(BillingError):
    """The service answered the check with ``allowed: false``; ``check`` is the full answer."""

    def __init__(self, check: CheckBudgetResponse) -> None:
        super().__init__(check.message, 200, check.status, check)
        self.check = check


class NotFound(BillingError):
    """404: unknown user, reservation or route."""


class Conflict(BillingError):
    """409: idempotency conflict, closed reservation, or a taken email or id."""


class Unavailable(BillingError):
    """The service could not be reached or answered 5xx after every allowed attempt."""


class Unauthorized(BillingError):
    """401: the key is missing or wrong. A set-up fault: queued work waits for the fix."""


class Rejected(BillingError):
    """Any other 4xx: bad input (400, 413, 422); sending it again will not help."""


class AmountOutOfRange(Rejected):
    """422 ``amount_out_of_range``: an amount past its bound, or a usage or credit that would take
    a counter past one (the body's ``field`` and ``bound`` say which). Final: the service wrote
    nothing and would refuse it again, so it is never retried."""
