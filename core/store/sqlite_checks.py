"""The invariants of ``core.reconcile`` on SQLite: find every drift, repair one with audit.

The invariants' SQL is ``flows_sql.INVARIANTS``, shared with PostgreSQL; the full scan and the
one-subject re-check read the same text.
"""

import sqlite3

from core.reconcile import Drift
from core.store.flows_sql import INVARIANTS, RECORD_REPAIR_SQL, REPAIR_NOTE, repair_params


def find_drift(
    connection: sqlite3.Connection, now_ms: int, expired_grace_ms: int, limit: int
) -> list[Drift]:
    """Every invariant over every row, in one read transaction; at most ``limit`` findings."""
    assert limit > 0 and expired_grace_ms >= 0
    found: list[Drift] = []
    connection.execute("BEGIN")
    try:
        for check, invariant in INVARIANTS.items():
            rows = connection.execute(
                invariant.scan,
                {"cutoff": now_ms - expired_grace_ms, "limit": limit - len(found)},
            )
            found.extend(Drift(check, str(key), had, facts) for key, had, facts in rows)
            if len(found) >= limit:
                break
    finally:
        connection.execute("COMMIT")
    return found


def repair_drift(
    connection: sqlite3.Connection, drift: Drift, now_ms: int, expired_grace_ms: int
) -> Drift | None:
    """Inside the caller's write transaction: re-check, fix and audit one finding, or None."""
    invariant = INVARIANTS[drift.check]
    row = connection.execute(
        invariant.recheck, {"id": drift.subject_id, "cutoff": now_ms - expired_grace_ms}
    ).fetchone()
    if row is None:
        return None
    current = Drift(drift.check, drift.subject_id, row[0], row[1])
    if invariant.fix is not None:
        changed = connection.execute(
            invariant.fix, {"id": drift.subject_id, "expected": current.expected, "now": now_ms}
        ).rowcount
        assert changed == 1, (drift, changed)
    record_repair(connection, current, REPAIR_NOTE, now_ms)
    return current


def record_repair(connection: sqlite3.Connection, drift: Drift, note: str, now_ms: int) -> None:
    connection.execute(RECORD_REPAIR_SQL, repair_params(drift, note, now_ms))
