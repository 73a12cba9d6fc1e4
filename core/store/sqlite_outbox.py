"""SQLite side of what the flows read and write: the alert outbox and reset summaries."""

import sqlite3

from core.alerts import Alert, AlertChannel, AlertCrossing, AlertSubject
from core.money import Money
from core.store.base import PeriodSummary, Spender


def insert_alerts(
    connection: sqlite3.Connection, found: list[AlertCrossing], period_label: str, now_ms: int
) -> None:
    """Inside the usage's transaction: one outbox row per crossing, unless already recorded.

    ``ON CONFLICT DO NOTHING`` refuses nothing, so a usage write never fails for its alert.
    """
    for crossing in found:
        connection.execute(
            "INSERT INTO alerts (subject, subject_id, period_label, threshold_percent, used,"
            " limit_amount, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (
                crossing.subject.value,
                crossing.subject_id,
                period_label,
                crossing.threshold_percent,
                crossing.used,
                crossing.limit,
                now_ms,
            ),
        )


def pending_alerts(connection: sqlite3.Connection, after_id: int, limit: int) -> list[Alert]:
    assert limit > 0
    rows = connection.execute(
        "SELECT a.id, a.subject, a.subject_id, a.period_label, a.threshold_percent, a.used,"
        " a.limit_amount, a.created_at, a.attempts, a.mailed_at, a.posted_at, u.email"
        " FROM alerts a LEFT JOIN users u ON a.subject = 'user' AND u.id = a.subject_id"
        " WHERE a.state = 'pending' AND a.id > ? ORDER BY a.id LIMIT ?",
        (after_id, limit),
    )
    alerts = []
    for (
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
    ) in rows:
        done = {AlertChannel.EMAIL} if mailed_at is not None else set()
        if posted_at is not None:
            done.add(AlertChannel.WEBHOOK)
        alerts.append(
            Alert(
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
        )
    return alerts


def record_alert_attempt(
    connection: sqlite3.Connection,
    alert_id: int,
    channels_done: frozenset[AlertChannel],
    error: str | None,
    now_ms: int,
) -> None:
    connection.execute(
        "UPDATE alerts SET attempts = attempts + 1, last_attempt_at = :now, last_error = :error,"
        " mailed_at = CASE WHEN :mailed THEN COALESCE(mailed_at, :now) ELSE mailed_at END,"
        " posted_at = CASE WHEN :posted THEN COALESCE(posted_at, :now) ELSE posted_at END,"
        " state = CASE WHEN :error IS NULL THEN 'delivered' ELSE state END,"
        " delivered_at = CASE WHEN :error IS NULL THEN :now ELSE delivered_at END"
        " WHERE id = :id AND state = 'pending'",
        {
            "id": alert_id,
            "now": now_ms,
            "error": error,
            "mailed": AlertChannel.EMAIL in channels_done,
            "posted": AlertChannel.WEBHOOK in channels_done,
        },
    )


def closed_period_summary(connection: sqlite3.Connection, label: str, top_n: int) -> PeriodSummary:
    """From one read transaction, so the total and the top spenders agree."""
    assert top_n > 0
    connection.execute("BEGIN")
    try:
        users, spend_total = connection.execute(
            "SELECT COUNT(DISTINCT user_id), COALESCE(SUM(used), 0)"
            " FROM period_history_effective WHERE closed_by = ?",
            (label,),
        ).fetchone()
        top = connection.execute(
            "SELECT h.user_id, u.email, SUM(h.used) AS spent FROM period_history_effective h"
            " JOIN users u ON u.id = h.user_id WHERE h.closed_by = ?"
            " GROUP BY h.user_id, u.email HAVING spent > 0 ORDER BY spent DESC, h.user_id LIMIT ?",
            (label, top_n),
        ).fetchall()
    finally:
        connection.execute("COMMIT")
    return PeriodSummary(
        label, users, Money(spend_total), [Spender(u, e, Money(s)) for u, e, s in top]
    )
