"""SQLite side of what the flows read and write: the alert outbox and reset summaries (the SQL
is ``flows_sql``'s, shared with PostgreSQL)."""

import sqlite3

from core.alerts import Alert, AlertChannel, AlertCrossing
from core.resets import PeriodSummary
from core.store import flows_sql


def insert_alerts(
    connection: sqlite3.Connection, found: list[AlertCrossing], period_label: str, now_ms: int
) -> None:
    """Inside the usage's transaction: one outbox row per crossing, unless already recorded.

    ``ON CONFLICT DO NOTHING`` refuses nothing, so a usage write never fails for its alert.
    """
    for crossing in found:
        connection.execute(
            flows_sql.INSERT_ALERT_SQL,
            {
                "subject": crossing.subject.value,
                "subject_id": crossing.subject_id,
                "label": period_label,
                "threshold": crossing.threshold_percent,
                "used": crossing.used,
                "limit": crossing.limit,
                "now": now_ms,
            },
        )


def pending_alerts(connection: sqlite3.Connection, after_id: int, limit: int) -> list[Alert]:
    assert limit > 0
    rows = connection.execute(flows_sql.PENDING_ALERTS_SQL, {"after_id": after_id, "limit": limit})
    return [flows_sql.alert_from_row(row) for row in rows]


def record_alert_attempt(
    connection: sqlite3.Connection,
    alert_id: int,
    channels_done: frozenset[AlertChannel],
    error: str | None,
    now_ms: int,
) -> None:
    connection.execute(
        flows_sql.RECORD_ALERT_ATTEMPT_SQL,
        flows_sql.attempt_params(alert_id, channels_done, error, now_ms),
    )


def closed_period_summary(connection: sqlite3.Connection, label: str, top_n: int) -> PeriodSummary:
    """From one read transaction, so the total and the top spenders agree."""
    assert top_n > 0
    connection.execute("BEGIN")
    try:
        total = connection.execute(flows_sql.SUMMARY_TOTAL_SQL, {"label": label}).fetchone()
        top = connection.execute(
            flows_sql.SUMMARY_TOP_SQL, {"label": label, "top_n": top_n}
        ).fetchall()
    finally:
        connection.execute("COMMIT")
    return flows_sql.summary_from_rows(label, total, top)
