"""Budget alerts: usage crossing 80 % and 100 % of a user's total or a tenant's cap.

The store asks ``crossings`` inside the transaction that records the usage and writes each answer
to its alert outbox there, so an alert exists exactly when its usage does. The outbox keeps one
alert per subject, period label and threshold (a UNIQUE constraint), so a threshold crossed again
in the same period (after a credit lowered the ratio, say) is not announced twice. Only usage
raises alerts; holds and credits do not. A zero limit is crossed, at every threshold, by the first
usage that costs anything.
"""

from dataclasses import dataclass
from enum import StrEnum

from core.budget import BudgetSnapshot
from core.money import Money, money_to_text

ALERT_THRESHOLDS_PERCENT = (80, 100)
ALERT_ERROR_CHARS_MAX = 500
ALERT_BATCH_MAX = 100


class AlertSubject(StrEnum):
    USER = "user"
    TENANT = "tenant"


class AlertChannel(StrEnum):
    EMAIL = "email"
    WEBHOOK = "webhook"


@dataclass(frozen=True, slots=True)
class AlertCrossing:
    """A threshold crossed by one usage: what the outbox records."""

    subject: AlertSubject
    subject_id: str
    threshold_percent: int
    used: Money
    limit: Money


@dataclass(frozen=True, slots=True)
class AdminNotice:
    """A message for ADMIN_EMAIL that the ledger writes to its outbox in the transaction of
    what it reports (a forced reset); the alert flow mails it. ``id`` is 0 until stored."""

    subject: str
    body: str
    id: int = 0


@dataclass(frozen=True, slots=True)
class Alert:
    """An outbox row as the delivery flow sees it; ``email`` is the user's (None for a tenant)."""

    id: int
    subject: AlertSubject
    subject_id: str
    period_label: str
    threshold_percent: int
    used: Money
    limit: Money
    created_at_ms: int
    attempts: int
    channels_done: frozenset[AlertChannel]
    email: str | None

    @property
    def dedup_key(self) -> str:
        """Stable per alert, so a receiver can drop a delivery it has already seen."""
        return f"cloudfreedom-alert-{self.id}"


def thresholds_crossed(used_before: Money, used_after: Money, limit: Money) -> tuple[int, ...]:
    """The thresholds ``t`` with ``used_before < t % of limit <= used_after``, exactly.

    PostgreSQL's ``ledger_log_usage`` writes the alerts in the database, through
    ``ledger_thresholds_crossed`` (``postgres_migrations/0002_flows.sql``), which restates this
    in SQL; its store asserts that the alerts written are those ``crossings`` finds."""
    assert used_before >= 0 and limit >= 0
    if used_after <= used_before:
        return ()
    if limit == 0:
        return ALERT_THRESHOLDS_PERCENT if used_before == 0 else ()
    return tuple(
        threshold
        for threshold in ALERT_THRESHOLDS_PERCENT
        if used_before * 100 < threshold * limit <= used_after * 100
    )


def crossings(
    before: BudgetSnapshot, cost: Money, user_id: str, tenant_id: str
) -> list[AlertCrossing]:
    """Every alert a usage of ``cost`` raises for its user and (when capped) their tenant."""
    user_after = Money(before.used + cost)
    found = [
        AlertCrossing(AlertSubject.USER, user_id, threshold, user_after, before.total)
        for threshold in thresholds_crossed(before.used, user_after, before.total)
    ]
    if before.tenant_cap is not None:
        cap, tenant_after = before.tenant_cap, Money(before.tenant_used + cost)
        found.extend(
            AlertCrossing(AlertSubject.TENANT, tenant_id, threshold, tenant_after, cap)
            for threshold in thresholds_crossed(before.tenant_used, tenant_after, cap)
        )
    return found


def alert_message(alert: Alert) -> tuple[str, str]:
    """Subject line and plain-text body of an alert, for mail and webhook alike: a user's alert
    speaks to the user (it is mailed to them), a tenant's to the admin."""
    used, limit = money_to_text(alert.used), money_to_text(alert.limit)
    if alert.subject is AlertSubject.USER:
        if alert.threshold_percent >= 100:
            subject = f"You have used up your budget for {alert.period_label}"
            advice = "Further requests are refused until your budget resets or is raised."
        else:
            share = f"{alert.threshold_percent}%"
            subject = f"You have used {share} of your budget for {alert.period_label}"
            advice = "When it is used up, further requests are refused until it resets."
        body = (
            f"You have used ${used} of your ${limit} budget for {alert.period_label}"
            f" (user id {alert.subject_id}). {advice}"
        )
        return subject, body
    reached = "used up" if alert.threshold_percent >= 100 else f"{alert.threshold_percent}% used"
    subject = f"Tenant {alert.subject_id}: budget {reached} ({alert.period_label})"
    body = (
        f"Tenant {alert.subject_id} has used ${used} of ${limit} in period {alert.period_label}"
        f" (threshold {alert.threshold_percent}%)."
    )
    return subject, body


def bounded_error(error: BaseException) -> str:
    """An error as kept on an alert: type and message, at most ``ALERT_ERROR_CHARS_MAX``."""
    return f"{type(error).__name__}: {error}"[:ALERT_ERROR_CHARS_MAX]
