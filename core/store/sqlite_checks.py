"""The invariants of ``core.reconcile`` as SQLite queries: find every drift, repair one with audit.

Each invariant names its rows, the figure the ledger records and the figure its facts add up to,
as SQL over one alias; the full scan and the one-subject re-check share that text.
"""

import sqlite3
from dataclasses import dataclass

from core.reconcile import Check, Drift

_USAGE_OF_OPEN_PERIOD = (
    "COALESCE((SELECT SUM(g.cost) FROM usage g"
    " WHERE g.user_id = u.id AND g.period_start = u.period_start), 0)"
)


@dataclass(frozen=True, slots=True)
class _Invariant:
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


_INVARIANTS: dict[Check, _Invariant] = {
    # First, so that repairs in order leave users.held and tenants.held right (a trigger moves
    # them when a hold closes).
    Check.HOLD_EXPIRED_OPEN: _Invariant(
        rows="reservations r",
        key="r.request_id",
        recorded="r.amount",
        expected="0",
        fix="UPDATE reservations SET state = 'expired', closed_at = :now"
        " WHERE request_id = :id AND state = 'open'",
        only="r.state = 'open' AND r.expires_at <= :cutoff",
    ),
    Check.USER_USED: _Invariant(
        rows="users u",
        key="u.id",
        recorded="u.used",
        expected=_USAGE_OF_OPEN_PERIOD,
        fix="UPDATE users SET used = :expected, updated_at = :now WHERE id = :id",
    ),
    Check.USER_HELD: _Invariant(
        rows="users u",
        key="u.id",
        recorded="u.held",
        expected="COALESCE((SELECT SUM(r.amount) FROM reservations r"
        " WHERE r.user_id = u.id AND r.state = 'open'), 0)",
        fix="UPDATE users SET held = :expected, updated_at = :now WHERE id = :id",
    ),
    Check.USER_CREDITS: _Invariant(
        rows="users u",
        key="u.id",
        recorded="u.credits",
        expected="COALESCE((SELECT SUM(c.amount) FROM credit_grants c"
        " WHERE c.user_id = u.id AND c.period_start = u.period_start), 0)",
        fix="UPDATE users SET credits = :expected, updated_at = :now WHERE id = :id",
    ),
    Check.TENANT_USED: _Invariant(
        rows="tenants t",
        key="t.id",
        recorded="t.used",
        expected=f"COALESCE((SELECT SUM({_USAGE_OF_OPEN_PERIOD}) FROM users u"
        " WHERE u.tenant_id = t.id), 0)",
        fix="UPDATE tenants SET used = :expected, updated_at = :now WHERE id = :id",
    ),
    Check.TENANT_HELD: _Invariant(
        rows="tenants t",
        key="t.id",
        recorded="t.held",
        expected="COALESCE((SELECT SUM(r.amount) FROM reservations r"
        " WHERE r.tenant_id = t.id AND r.state = 'open'), 0)",
        fix="UPDATE tenants SET held = :expected, updated_at = :now WHERE id = :id",
    ),
    # Period history is append-only: the repair is the audit row, read as a correction through
    # the period_history_effective view.
    Check.HISTORY_USED: _Invariant(
        rows="period_history_effective h",
        key="CAST(h.id AS TEXT)",
        recorded="h.used",
        expected="COALESCE((SELECT SUM(g.cost) FROM usage g"
        " WHERE g.user_id = h.user_id AND g.period_start = h.period_start), 0)",
        fix=None,
    ),
}


def find_drift(
    connection: sqlite3.Connection, now_ms: int, expired_grace_ms: int, limit: int
) -> list[Drift]:
    """Every invariant over every row, in one read transaction; at most ``limit`` findings."""
    assert limit > 0 and expired_grace_ms >= 0
    found: list[Drift] = []
    connection.execute("BEGIN")
    try:
        for check, invariant in _INVARIANTS.items():
            rows = connection.execute(
                f"SELECT {invariant.key}, {invariant.recorded}, {invariant.expected}"
                f" FROM {invariant.rows} WHERE {invariant.drifted}"
                f" ORDER BY {invariant.key} LIMIT :limit",
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
    invariant = _INVARIANTS[drift.check]
    row = connection.execute(
        f"SELECT {invariant.recorded}, {invariant.expected} FROM {invariant.rows}"
        f" WHERE {invariant.key} = :id AND {invariant.drifted}",
        {"id": drift.subject_id, "cutoff": now_ms - expired_grace_ms},
    ).fetchone()
    if row is None:
        return None
    current = Drift(drift.check, drift.subject_id, row[0], row[1])
    if invariant.fix is not None:
        changed = connection.execute(
            invariant.fix, {"id": drift.subject_id, "expected": current.expected, "now": now_ms}
        ).rowcount
        assert changed == 1, (drift, changed)
    record_repair(connection, current, "reconcile-usage repair", now_ms)
    return current


def record_repair(connection: sqlite3.Connection, drift: Drift, note: str, now_ms: int) -> None:
    connection.execute(
        "INSERT INTO ledger_repairs (check_name, subject_id, recorded, expected, note, repaired_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (drift.check.value, drift.subject_id, drift.recorded, drift.expected, note, now_ms),
    )
