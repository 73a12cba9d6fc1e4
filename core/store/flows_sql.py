"""The SQL both stores run for the flows, written once: the invariants of ``core.reconcile``, the
alert outbox's reads and writes, reset summaries; and their rows as values.

Parameters are SQLite's ``:name``; ``pg_params`` rewrites them as psycopg's ``%(name)s``.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from core.alerts import Alert, AlertChannel, AlertSubject
from core.money import NANOS_PER_UNIT, Money
from core.reconcile import Check, Drift
from core.resets import PeriodSummary, Spender

_USAGE_OF_OPEN_PERIOD = (
    "COALESCE((SELECT SUM(g.cost) FROM usage g"
    " WHERE g.user_id = u.id AND g.period_start = u.period_start), 0)"
)


@dataclass(frozen=True, slots=True)
class Invariant:
    """One invariant as SQL over one alias: its rows, key, recorded and expected figures."""

    rows: str
    key: str
    recorded: str
    expected: str
    fix: str | None
    only: str | None = None

    @property
    def drifted(self) -> str:
        """The rows in breach: those ``only`` names, else those whose figures differ."""
        return self.only if self.only is not None else f"{self.recorded} != {self.expected}"

    @property
    def scan(self) -> str:
        """Every row in breach, in key order, at most ``:limit``."""
        return (
            f"SELECT {self.key}, {self.recorded}, {self.expected} FROM {self.rows}"
            f" WHERE {self.drifted} ORDER BY {self.key} LIMIT :limit"
        )

    @property
    def recheck(self) -> str:
        """The one subject ``:id``, if it is still in breach."""
        return (
            f"SELECT {self.recorded}, {self.expected} FROM {self.rows}"
            f" WHERE {self.key} = :id AND {self.drifted}"
        )


INVARIANTS: dict[Check, Invariant] = {
    # First, so that repairs in order leave users.held and tenants.held right (a trigger moves
    # them when a hold closes).
    Check.HOLD_EXPIRED_OPEN: Invariant(
        rows="reservations r",
        key="r.request_id",
        recorded="r.amount",
        expected="0",
        fix="UPDATE reservations SET state = 'expired', closed_at = :now"
        " WHERE request_id = :id AND state = 'open'",
        only="r.state = 'open' AND r.expires_at <= :cutoff",
    ),
    Check.USER_USED: Invariant(
        rows="users u",
        key="u.id",
        recorded="u.used",
        expected=_USAGE_OF_OPEN_PERIOD,
        fix="UPDATE users SET used = :expected, updated_at = :now WHERE id = :id",
    ),
    Check.USER_HELD: Invariant(
        rows="users u",
        key="u.id",
        recorded="u.held",
        expected="COALESCE((SELECT SUM(r.amount) FROM reservations r"
        " WHERE r.user_id = u.id AND r.state = 'open'), 0)",
        fix="UPDATE users SET held = :expected, updated_at = :now WHERE id = :id",
    ),
    Check.USER_CREDITS: Invariant(
        rows="users u",
        key="u.id",
        recorded="u.credits",
        expected="COALESCE((SELECT SUM(c.amount) FROM credit_grants c"
        " WHERE c.user_id = u.id AND c.period_start = u.period_start), 0)",
        fix="UPDATE users SET credits = :expected, updated_at = :now WHERE id = :id",
    ),
    Check.TENANT_USED: Invariant(
        rows="tenants t",
        key="t.id",
        recorded="t.used",
        expected=f"COALESCE((SELECT SUM({_USAGE_OF_OPEN_PERIOD}) FROM users u"
        " WHERE u.tenant_id = t.id), 0)",
        fix="UPDATE tenants SET used = :expected, updated_at = :now WHERE id = :id",
    ),
    Check.TENANT_HELD: Invariant(
        rows="tenants t",
        key="t.id",
        recorded="t.held",
        expected="COALESCE((SELECT SUM(r.amount) FROM reservations r"
        " WHERE r.tenant_id = t.id AND r.state = 'open'), 0)",
        fix="UPDATE tenants SET held = :expected, updated_at = :now WHERE id = :id",
    ),
    # Period history is append-only: the repair is the audit row, read as a correction through
    # the period_history_effective view.
    Check.HISTORY_USED: Invariant(
        rows="period_history_effective h",
        key="CAST(h.id AS TEXT)",
        recorded="h.used",
        expected="COALESCE((SELECT SUM(g.cost) FROM usage g"
        " WHERE g.user_id = h.user_id AND g.period_start = h.period_start), 0)",
        fix=None,
    ),
}

REPAIR_NOTE = "reconcile-usage repair"

RECORD_REPAIR_SQL = (
    "INSERT INTO ledger_repairs (check_name, subject_id, recorded, expected, note, repaired_at)"
    " VALUES (:check, :id, :recorded, :expected, :note, :now)"
)

INSERT_ALERT_SQL = (
    "INSERT INTO alerts (subject, subject_id, period_label, threshold_percent, used,"
    " limit_amount, created_at) VALUES (:subject, :subject_id, :label, :threshold, :used,"
    " :limit, :now) ON CONFLICT DO NOTHING"
)

PENDING_ALERTS_SQL = (
    "SELECT a.id, a.subject, a.subject_id, a.period_label, a.threshold_percent, a.used,"
    " a.limit_amount, a.created_at, a.attempts, a.mailed_at, a.posted_at, u.email"
    " FROM alerts a LEFT JOIN users u ON a.subject = 'user' AND u.id = a.subject_id"
    " WHERE a.state = 'pending' AND a.id > :after_id ORDER BY a.id LIMIT :limit"
)

RECORD_ALERT_ATTEMPT_SQL = (
    "UPDATE alerts SET attempts = attempts + 1, last_attempt_at = :now, last_error = :error,"
    " mailed_at = CASE WHEN :mailed THEN COALESCE(mailed_at, :now) ELSE mailed_at END,"
    " posted_at = CASE WHEN :posted THEN COALESCE(posted_at, :now) ELSE posted_at END,"
    " state = CASE WHEN CAST(:error AS TEXT) IS NULL THEN 'delivered' ELSE state END,"
    " delivered_at = CASE WHEN CAST(:error AS TEXT) IS NULL THEN :now ELSE delivered_at END"
    " WHERE id = :id AND state = 'pending'"
)

# Whole dollars and nano-dollars are added apart: ten users at COUNTER_MAX already pass
# SQLite's 64-bit SUM, which fails with "integer overflow"; each part stays far inside it.
SUMMARY_TOTAL_SQL = (
    f"SELECT COUNT(DISTINCT user_id), COALESCE(SUM(used / {NANOS_PER_UNIT}), 0),"
    f" COALESCE(SUM(used - used / {NANOS_PER_UNIT} * {NANOS_PER_UNIT}), 0)"
    " FROM period_history_effective WHERE closed_by = :label"
)

SUMMARY_TOP_SQL = (
    "SELECT h.user_id, u.email, SUM(h.used) AS spent FROM period_history_effective h"
    " JOIN users u ON u.id = h.user_id WHERE h.closed_by = :label"
    " GROUP BY h.user_id, u.email HAVING SUM(h.used) > 0 ORDER BY spent DESC, h.user_id"
    " LIMIT :top_n"
)

_NAMED_PARAMETER = re.compile(r"(?<![:\w]):([a-z_]+)\b")


def pg_params(statement: str) -> str:
    """A statement above with psycopg's ``%(name)s`` parameters in place of ``:name``."""
    assert "%" not in statement and "::" not in statement, statement
    return _NAMED_PARAMETER.sub(r"%(\1)s", statement)


def repair_params(drift: Drift, note: str, now_ms: int) -> dict[str, Any]:
    """The parameters of ``RECORD_REPAIR_SQL``: the drift as found, and why it was written."""
    return {
        "check": drift.check.value,
        "id": drift.subject_id,
        "recorded": drift.recorded,
        "expected": drift.expected,
        "note": note,
        "now": now_ms,
    }


def backfill_note(source: str) -> str:
    return f"usage backfilled from {source}"


def attempt_params(
    alert_id: int, channels_done: frozenset[AlertChannel], error: str | None, now_ms: int
) -> dict[str, Any]:
    return {
        "id": alert_id,
        "now": now_ms,
        "error": error,
        "mailed": AlertChannel.EMAIL in channels_done,
        "posted": AlertChannel.WEBHOOK in channels_done,
    }


def alert_from_row(row: tuple[Any, ...]) -> Alert:
    """An ``Alert`` from a row of ``PENDING_ALERTS_SQL``."""
    (
        id_,
        subject,
        subject_id,
        label,
        threshold,
        used,
        limit_amount,
        created_at,
        attempts,
        mailed_at,
        posted_at,
        email,
    ) = row
    done = {AlertChannel.EMAIL} if mailed_at is not None else set()
    if posted_at is not None:
        done.add(AlertChannel.WEBHOOK)
    return Alert(
        id_,
        AlertSubject(subject),
        subject_id,
        label,
        threshold,
        Money(used),
        Money(limit_amount),
        created_at,
        attempts,
        frozenset(done),
        email,
    )


def summary_from_rows(
    label: str, total: tuple[Any, ...], top: Iterable[tuple[Any, ...]]
) -> PeriodSummary:
    """A ``PeriodSummary`` from the rows of ``SUMMARY_TOTAL_SQL`` and ``SUMMARY_TOP_SQL``."""
    users, spend_units, spend_nanos = total
    spend_total = int(spend_units) * NANOS_PER_UNIT + int(spend_nanos)
    spenders = [Spender(user_id, email, Money(int(spent))) for user_id, email, spent in top]
    return PeriodSummary(label, int(users), Money(int(spend_total)), spenders)
