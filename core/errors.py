"""Domain errors: each carries a stable ``code`` the API turns into a status and a JSON body."""

from decimal import Decimal


class ConfigurationError(ValueError):
    """A setting the service cannot start with; the message names the variable."""


class LedgerError(Exception):
    """Base of every refusal by the ledger; a refused operation changed nothing."""

    code = "ledger_error"

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(LedgerError):
    code = "not_found"


class IdempotencyConflict(LedgerError):
    """The same idempotency key arrived again with different content."""

    code = "idempotency_conflict"


class ReservationClosed(LedgerError):
    """The hold was settled, released or expired; it cannot be placed or used again."""

    code = "reservation_closed"


class Duplicate(LedgerError):
    """A unique field (email, id) is taken."""

    code = "conflict"


class Invalid(LedgerError):
    """Well-formed input the domain refuses (unknown product, unknown model); names its field."""

    code = "validation_error"

    def __init__(self, message: str, field: str, **details: object) -> None:
        super().__init__(message, field=field, **details)
        self.field = field


class ResetRefused(LedgerError):
    """A labelled reset that could only destroy a month (``core.resets``); names a valid one."""

    code = "reset_refused"


class AmountOutOfRange(LedgerError):
    """An amount, or a counter it would move, past its bound in ``core.money``; nothing was
    written, and sending it again cannot help. Names the request field and the bound."""

    code = "amount_out_of_range"

    def __init__(self, message: str, field: str, bound: Decimal) -> None:
        super().__init__(message, field=field, bound=bound)
        self.field = field


class Unavailable(LedgerError):
    """The store cannot take the operation now (busy, overloaded); nothing was done."""

    code = "unavailable"


class IdentityUnavailable(LedgerError):
    """The identity store (PocketBase) failed or refused in a way the caller cannot fix."""

    code = "identity_store_error"


class RateLimited(LedgerError):
    """Over a configured rate limit; the call may be retried after ``retry_after_seconds``."""

    code = "rate_limited"

    def __init__(self, message: str, scope: str, retry_after_seconds: int) -> None:
        assert retry_after_seconds >= 1
        super().__init__(message, scope=scope, retry_after_seconds=retry_after_seconds)
        self.retry_after_seconds = retry_after_seconds
