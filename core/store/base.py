"""The storage interface every backend implements, and what the backends share.

A backend runs each write as one transaction that holds the rows it decides on (SQLite:
``BEGIN IMMEDIATE``; PostgreSQL: row locks), asks the rules in ``core.budget``,
``core.reservations`` and ``core.usage``, and applies their answer. Money is ``core.money.Money``
and times are integer ms since the epoch throughout. What a store returns is what the ledger
hands out, defined beside its rules: ``core.accounts``, ``core.budget``, ``core.usage``,
``core.resets``.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal, Protocol

from core.accounts import CreditGrant, NewUser, Product, Tenant, UserView
from core.alerts import AdminNotice, Alert, AlertChannel
from core.budget import BudgetSnapshot, CheckResult, UserStatus
from core.errors import LedgerError, Unavailable
from core.money import Money
from core.reconcile import Drift
from core.reservations import Reservation
from core.resets import PeriodSummary, ResetOutcome, ResetRequest, ResetRun
from core.usage import LogOutcome, UsageGroup, UsageRecord

# How long a failed write keeps the health check failing when no later write succeeds.
WRITE_FAILURE_REPORT_MS = 60_000


class WriteFailures:
    """The last write's failure, remembered for the health check until a write succeeds.

    A database that answers reads but refuses every write (a full disk) is not healthy, and a
    read-only probe cannot tell. With no write after the failure it is reported for at most
    ``WRITE_FAILURE_REPORT_MS``: past that, nothing says the database still fails.
    """

    def __init__(self, clock_ms: Callable[[], int]) -> None:
        self._clock_ms = clock_ms
        self._last: tuple[int, str] | None = None  # (when, why); one assignment: thread-safe

    def succeeded(self) -> None:
        self._last = None

    def failed(self, reason: str) -> None:
        self._last = (self._clock_ms(), reason)

    def check(self) -> None:
        """Raise ``Unavailable`` while the last write's failure is the news."""
        last = self._last
        if last is None:
            return
        failed_at_ms, reason = last
        age_ms = self._clock_ms() - failed_at_ms
        if age_ms < WRITE_FAILURE_REPORT_MS:
            raise Unavailable(f"the last write failed {age_ms // 1000} s ago: {reason}")


@dataclass(frozen=True, slots=True)
class MigrationScript:
    version: int
    name: str
    sql: str


def migration_scripts(folder: str) -> list[MigrationScript]:
    """This release's migrations, ``core/store/<folder>/NNNN_*.sql``, in version order."""
    directory = resources.files("core.store").joinpath(folder)
    names = sorted(entry.name for entry in directory.iterdir() if entry.name.endswith(".sql"))
    return [
        MigrationScript(
            int(name.split("_", 1)[0]), name, directory.joinpath(name).read_text("utf-8")
        )
        for name in names
    ]


def newer_migrations(
    recorded: Iterable[tuple[int, str]], scripts: list[MigrationScript]
) -> list[str]:
    """Migrations the database records that this release does not ship, by name.

    A newer release applied them: this one is older than its database (a rollback, or an old
    worker restarting during a rolling deploy). The store still opens, and the caller warns:
    refusing would stop that old worker mid-deploy, and a rollback is the operator's choice.
    """
    known = {script.version for script in scripts}
    return [name for version, name in sorted(recorded) if version not in known]


# The columns every backend's user query returns, in order (``user_view_from_row`` reads them).
USER_VIEW_COLUMNS = (
    "id",
    "email",
    "product_id",
    "tenant_id",
    "status",
    "period_label",
    "period_start",
    "created_at",
    "plan_budget",
    "credits",
    "used",
    "held",
    "held_expired",
    "tenant_cap",
    "tenant_used",
    "tenant_held",
    "tenant_held_expired",
)


def user_view_from_row(row: tuple[Any, ...]) -> UserView:
    """A user and their figures from one row of ``USER_VIEW_COLUMNS``.

    Holds past their expiry still sit in the counters until swept; they no longer count here.
    """
    assert len(row) == len(USER_VIEW_COLUMNS), row
    (
        id_,
        email,
        product_id,
        tenant_id,
        status,
        label,
        start,
        created,
        plan_budget,
        credits,
        used,
        held,
        held_expired,
        tenant_cap,
        tenant_used,
        tenant_held,
        tenant_held_expired,
    ) = row
    user_status = UserStatus(status)
    snapshot = BudgetSnapshot(
        user_status=user_status,
        plan_budget=Money(plan_budget),
        credits=Money(credits),
        used=Money(used),
        held=Money(held - held_expired),
        tenant_cap=None if tenant_cap is None else Money(tenant_cap),
        tenant_used=Money(tenant_used),
        tenant_held=Money(tenant_held - tenant_held_expired),
    )
    return UserView(id_, email, product_id, tenant_id, user_status, label, start, created, snapshot)


GroupBy = Literal["model", "bucket"]


class LedgerStore(Protocol):
    """Storage of the ledger; every method is one transaction, safe across threads.

    Opening a store applies its pending schema migrations; ``applied_migrations`` names them,
    and ``newer_migrations`` those the database has from a release newer than this one.
    ``configuration_warnings`` says what about the database's settings an operator should fix.
    """

    applied_migrations: list[str]
    newer_migrations: list[str]
    configuration_warnings: list[str]

    def check_health(self) -> None:
        """Raise if the database cannot answer a query, or cannot take writes now."""

    def close(self) -> None: ...

    def read_user(self, user_id: str, now_ms: int) -> UserView | None: ...

    def user_id_by_email(self, email: str) -> str | None:
        """The id of the user with this email, compared case-insensitively (``casefold``)."""

    def tenant_exists(self, tenant_id: str) -> bool: ...

    def count_open_reservations(self, now_ms: int) -> int:
        """Holds in state open that have not expired at ``now_ms`` (an index count, for metrics)."""

    def reserve(
        self, user_id: str, request_id: str, amount: Money, expires_at_ms: int, now_ms: int
    ) -> CheckResult:
        """``core.budget.check`` on the figures this transaction reads, placing the hold when it
        allows; a retry returns the same hold."""

    def log_usage(
        self, record: UsageRecord, response_time_ms: int | None, now_ms: int
    ) -> LogOutcome:
        """Append usage, settle its hold, count its cost; an identical replay changes nothing."""

    def log_usage_many(
        self, entries: list[tuple[UsageRecord, int | None]], now_ms: int
    ) -> list[LogOutcome | LedgerError]:
        """``log_usage`` of each (record, response time), in order: each record's outcome, or
        the ledger's refusal of that record alone (the others are still written)."""

    def release(self, request_id: str, now_ms: int) -> Reservation:
        """Release a hold (idempotent); returns the hold as it was found."""

    def start_reset(self, request: ResetRequest, now_ms: int) -> ResetOutcome | ResetRun:
        """Start ``request`` by the reset rule of ``core.resets``, checked in this transaction
        (``ResetRefused`` changes nothing), and return its run; or the outcome when its label
        was applied already (``apply_once``); or, first, the run left unfinished, to finish
        (``ResetRun.carries_request`` says whether it is the same reset)."""

    def reset_batch(self, run_id: int, lane: int, users_max: int, now_ms: int) -> bool:
        """One batch of one lane of the run, in one transaction: True once the lane has no user
        left to visit. Batches of different lanes may run at once.

        History rows written carry ``closed_by = label``.
        """

    def finish_reset(self, run_id: int, now_ms: int) -> ResetOutcome | None:
        """The run's outcome once every lane is finished (None while one is not), finishing it
        in one transaction if it is not yet."""

    def pending_admin_notices(self, limit: int) -> list[AdminNotice]:
        """Up to ``limit`` notices not yet mailed, oldest first."""

    def admin_notice_delivered(self, notice_id: int, now_ms: int) -> None: ...

    def closed_period_summary(self, label: str, top_n: int) -> PeriodSummary:
        """Users, total spend and the ``top_n`` top spenders of what reset ``label`` closed."""

    def provision_user(self, user: NewUser, now_ms: int) -> UserView: ...

    def put_product(self, product: Product, now_ms: int) -> bool:
        """Create or replace; True when created."""

    def list_products(self) -> list[Product]: ...

    def put_tenant(self, tenant: Tenant, now_ms: int) -> bool:
        """Create or replace; True when created."""

    def update_user(
        self, user_id: str, status: UserStatus | None, product_id: str | None, now_ms: int
    ) -> UserView: ...

    def grant_credit(self, grant: CreditGrant, now_ms: int) -> tuple[bool, UserView]:
        """Add credit to the open period; a replayed ``grant_id`` changes nothing."""

    def usage_groups(
        self, user_id: str, from_ms: int, to_ms: int, group_by: GroupBy
    ) -> list[UsageGroup]: ...

    def backfill_usage(self, record: UsageRecord, source: str, now_ms: int) -> bool:
        """``log_usage`` for usage found elsewhere, with an audit row when created; True if new."""

    def pending_alerts(self, after_id: int, limit: int) -> list[Alert]:
        """Undelivered alerts with an id above ``after_id``, oldest first, at most ``limit``."""

    def record_alert_attempt(
        self, alert_id: int, channels_done: frozenset[AlertChannel], error: str | None, now_ms: int
    ) -> None:
        """Count a delivery attempt: channels that succeeded, and the error (None: delivered)."""

    def delete_closed_reservations(self, closed_before_ms: int, limit: int) -> int:
        """Delete at most ``limit`` holds settled, released or expired before that instant."""

    def find_drift(self, now_ms: int, expired_grace_ms: int, limit: int) -> list[Drift]:
        """Every difference between counters and facts (``core.reconcile``), at most ``limit``.

        Expired-hold findings come first, so repairing in order leaves the held counters right.
        """

    def repair_drift(self, drift: Drift, now_ms: int) -> Drift | None:
        """Re-check one finding in a write transaction; fix it with an audit row, or None."""
