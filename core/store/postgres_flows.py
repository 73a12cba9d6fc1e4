"""PostgreSQL side of what the flows read and write: the alert outbox, reset summaries, and the
invariants of ``core.reconcile`` (the SQL is ``flows_sql``'s, shared with SQLite).

Reads that must agree with each other run in one ``REPEATABLE READ, READ ONLY`` transaction
(one snapshot). A repair, inside the caller's write transaction, first locks what the
invariant's figure depends on, in the writers' lock order (the user's row; for a tenant, the
tenant's row), so no write moves the figure between the re-check and the fix.
"""

from typing import Any

import psycopg

from core.alerts import Alert, AlertChannel
from core.reconcile import Check, Drift
from core.resets import PeriodSummary
from core.store import flows_sql

# The nightly scan reads every row; it gets longer than a request's statement_timeout.
DRIFT_SCAN_TIMEOUT_MS = 600_000

_LOCK_USER = "SELECT 1 FROM users WHERE id = %(id)s FOR UPDATE"
_LOCK_TENANT = "SELECT 1 FROM tenants WHERE id = %(id)s FOR UPDATE"
_LOCKS: dict[Check, str | None] = {
    Check.HOLD_EXPIRED_OPEN: "SELECT 1 FROM users WHERE id ="
    " (SELECT user_id FROM reservations WHERE request_id = %(id)s) FOR UPDATE",
    Check.USER_USED: _LOCK_USER,
    Check.USER_HELD: _LOCK_USER,
    Check.USER_CREDITS: _LOCK_USER,
    Check.TENANT_USED: _LOCK_TENANT,
    Check.TENANT_HELD: _LOCK_TENANT,
    Check.HISTORY_USED: None,
}

_SCANS = {
    check: flows_sql.pg_params(invariant.scan) for check, invariant in flows_sql.INVARIANTS.items()
}
_RECHECKS = {
    check: flows_sql.pg_params(invariant.recheck)
    for check, invariant in flows_sql.INVARIANTS.items()
}
_FIXES = {
    check: None if invariant.fix is None else flows_sql.pg_params(invariant.fix)
    for check, invariant in flows_sql.INVARIANTS.items()
}
_RECORD_REPAIR_SQL = flows_sql.pg_params(flows_sql.RECORD_REPAIR_SQL)
_PENDING_ALERTS_SQL = flows_sql.pg_params(flows_sql.PENDING_ALERTS_SQL)
_RECORD_ALERT_ATTEMPT_SQL = flows_sql.pg_params(flows_sql.RECORD_ALERT_ATTEMPT_SQL)
_SUMMARY_TOTAL_SQL = flows_sql.pg_params(flows_sql.SUMMARY_TOTAL_SQL)
_SUMMARY_TOP_SQL = flows_sql.pg_params(flows_sql.SUMMARY_TOP_SQL)

Connection = psycopg.Connection[Any]


def _snapshot(connection: Connection) -> None:
    """Make the transaction just begun one read-only snapshot."""
    connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")


def find_drift(
    connection: Connection, now_ms: int, expired_grace_ms: int, limit: int
) -> list[Drift]:
    """Every invariant over every row, from one snapshot; at most ``limit`` findings."""
    assert limit > 0 and expired_grace_ms >= 0
    found: list[Drift] = []
    with connection.transaction():
        _snapshot(connection)
        connection.execute(f"SET LOCAL statement_timeout = {DRIFT_SCAN_TIMEOUT_MS}")
        for check, scan in _SCANS.items():
            rows = connection.execute(
                scan, {"cutoff": now_ms - expired_grace_ms, "limit": limit - len(found)}
            ).fetchall()
            found.extend(Drift(check, str(key), int(had), int(facts)) for key, had, facts in rows)
            if len(found) >= limit:
                break
    return found


def repair_drift(
    connection: Connection, drift: Drift, now_ms: int, expired_grace_ms: int
) -> Drift | None:
    """Inside the caller's write transaction: lock, re-check, fix and audit one finding, or None."""
    assert connection.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS, drift
    lock = _LOCKS[drift.check]
    if lock is not None:
        connection.execute(lock, {"id": drift.subject_id})
    row = connection.execute(
        _RECHECKS[drift.check],
        {"id": drift.subject_id, "cutoff": now_ms - expired_grace_ms},
    ).fetchone()
    if row is None:
        return None
    current = Drift(drift.check, drift.subject_id, int(row[0]), int(row[1]))
    fix = _FIXES[drift.check]
    if fix is not None:
        changed = connection.execute(
            fix, {"id": drift.subject_id, "expected": current.expected, "now": now_ms}
        ).rowcount
        assert changed == 1, (drift, changed)
    record_repair(connection, current, flows_sql.REPAIR_NOTE, now_ms)
    return current


def record_repair(connection: Connection, drift: Drift, note: str, now_ms: int) -> None:
    connection.execute(_RECORD_REPAIR_SQL, flows_sql.repair_params(drift, note, now_ms))


def pending_alerts(connection: Connection, after_id: int, limit: int) -> list[Alert]:
    assert limit > 0
    rows = connection.execute(_PENDING_ALERTS_SQL, {"after_id": after_id, "limit": limit})
    return [flows_sql.alert_from_row(row) for row in rows.fetchall()]


def record_alert_attempt(
    connection: Connection,
    alert_id: int,
    channels_done: frozenset[AlertChannel],
    error: str | None,
    now_ms: int,
) -> None:
    connection.execute(
        _RECORD_ALERT_ATTEMPT_SQL,
        flows_sql.attempt_params(alert_id, channels_done, error, now_ms),
    )


def closed_period_summary(connection: Connection, label: str, top_n: int) -> PeriodSummary:
    """From one snapshot, so the total and the top spenders agree."""
    assert top_n > 0
    with connection.transaction():
        _snapshot(connection)
        total = connection.execute(_SUMMARY_TOTAL_SQL, {"label": label}).fetchone()
        top = connection.execute(_SUMMARY_TOP_SQL, {"label": label, "top_n": top_n}).fetchall()
    assert total is not None
    return flows_sql.summary_from_rows(label, total, top)
