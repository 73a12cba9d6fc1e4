"""Reconciliation (core/reconcile.py) on both stores: drift injected behind the store's back is
found, reported and repaired with an audit row; LiteLLM spend-log rows are backfilled once."""

import sqlite3
from decimal import Decimal

import psycopg
import pytest
from core_helpers import APRIL, MAY, TTL_SECONDS, provision, usd
from pg_testing import PgRaw

from core.accounts import Tenant
from core.reconcile import EXPIRED_HOLD_GRACE_MS, Check, Drift, usage_from_spend_log
from core.store import postgres_flows, sqlite_checks


def log(ledger, user_id, request_id, cost):
    return ledger.log_usage(user_id, "gpt-4o", request_id, 1, 1, usd(cost), None)


def audit_rows(raw: sqlite3.Connection | PgRaw) -> list[tuple]:
    return raw.execute(
        "SELECT check_name, subject_id, recorded, expected FROM ledger_repairs ORDER BY id"
    ).fetchall()


@pytest.fixture
def busy(ledger, basic):
    """Two users in a capped tenant with usage, a hold and a credit."""
    ledger.put_tenant(Tenant("acme", "Acme", usd(100)))
    provision(ledger, "ann", tenant_id="acme")
    provision(ledger, "bob", tenant_id="acme")
    log(ledger, "ann", "r1", "1.25")
    log(ledger, "bob", "r2", "2")
    ledger.check_budget("ann", None, 0, 0, usd("0.5"), "h1")
    ledger.grant_credit("bob", usd(3), "goodwill", "g1")
    return ledger


def test_a_consistent_ledger_has_no_drift(busy):
    report = busy.reconcile(repair=True)
    assert (report.drifts, report.repaired, report.truncated) == ([], [], False)
    assert not report.anything_found


@pytest.mark.parametrize(
    ("tamper", "drift"),
    [
        (
            "UPDATE users SET used = used + 5000 WHERE id = 'ann'",
            Drift(Check.USER_USED, "ann", 1_250_005_000, 1_250_000_000),
        ),
        (
            "UPDATE users SET held = 0 WHERE id = 'ann'",
            Drift(Check.USER_HELD, "ann", 0, 500_000_000),
        ),
        (
            "UPDATE users SET credits = 0 WHERE id = 'bob'",
            Drift(Check.USER_CREDITS, "bob", 0, 3_000_000_000),
        ),
        (
            "UPDATE tenants SET used = 7 WHERE id = 'acme'",
            Drift(Check.TENANT_USED, "acme", 7, 3_250_000_000),
        ),
        (
            "UPDATE tenants SET held = 0 WHERE id = 'acme'",
            Drift(Check.TENANT_HELD, "acme", 0, 500_000_000),
        ),
    ],
)
def test_injected_drift_is_found_then_repaired_with_an_audit_row(busy, raw, tamper, drift):
    raw.execute(tamper)
    found = busy.reconcile(repair=False)
    assert found.drifts == [drift]
    assert found.repaired == [] and audit_rows(raw) == []
    repaired = busy.reconcile(repair=True)
    assert repaired.repaired == [drift]
    assert audit_rows(raw) == [
        (drift.check.value, drift.subject_id, drift.recorded, drift.expected)
    ]
    assert busy.reconcile(repair=False).drifts == []


def tamper_with_history(raw, backend: str, statement: str) -> None:
    """Run ``statement`` on period history, which refuses UPDATE, with its guard lifted."""
    if backend == "sqlite":
        raw.execute("DROP TRIGGER period_history_no_update")
        raw.execute(statement)
        raw.execute(
            "CREATE TRIGGER period_history_no_update BEFORE UPDATE ON period_history"
            " BEGIN SELECT RAISE(ABORT, 'period history is append-only'); END"
        )
    else:
        raw.execute("ALTER TABLE period_history DISABLE TRIGGER period_history_no_change")
        raw.execute(statement)
        raw.execute("ALTER TABLE period_history ENABLE TRIGGER period_history_no_change")


def test_history_drift_is_corrected_by_an_audit_row_not_an_edit(busy, raw, clock, backend):
    clock.advance(1)
    busy.reset_budgets(None)
    tamper_with_history(raw, backend, "UPDATE period_history SET used = 1 WHERE user_id = 'ann'")
    [row_id] = raw.execute("SELECT id FROM period_history WHERE user_id = 'ann'").fetchone()
    drift = Drift(Check.HISTORY_USED, str(row_id), 1, usd("1.25"))
    assert busy.reconcile(repair=True).repaired == [drift]
    assert raw.execute("SELECT used FROM period_history WHERE id = ?", (row_id,)).fetchone() == (1,)
    assert busy.reconcile(repair=False).drifts == []
    summary = busy.closed_period_summary("2026-03", 10)
    assert summary.spend_total == usd("3.25")


def test_an_expired_hold_still_open_is_found_and_closed(busy, store, database_url, clock):
    """The store's own checks on a connection of their own, past the expiry and its grace."""
    store.close()  # no housekeeper sweeping behind the test's back
    later_ms = clock() + TTL_SECONDS * 1000 + EXPIRED_HOLD_GRACE_MS
    if database_url.startswith("sqlite:"):
        connection = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        checks = sqlite_checks

        def repair(drift: Drift) -> Drift | None:
            connection.execute("BEGIN IMMEDIATE")
            try:
                return sqlite_checks.repair_drift(
                    connection, drift, later_ms, EXPIRED_HOLD_GRACE_MS
                )
            finally:
                connection.execute("COMMIT")
    else:
        connection = psycopg.connect(database_url, autocommit=True)
        checks = postgres_flows

        def repair(drift: Drift) -> Drift | None:
            with connection.transaction():
                return postgres_flows.repair_drift(
                    connection, drift, later_ms, EXPIRED_HOLD_GRACE_MS
                )

    try:
        [drift] = checks.find_drift(connection, later_ms, EXPIRED_HOLD_GRACE_MS, 10)
        assert drift == Drift(Check.HOLD_EXPIRED_OPEN, "h1", usd("0.5"), 0)
        assert repair(drift) == drift
        assert repair(drift) is None
        assert checks.find_drift(connection, later_ms, EXPIRED_HOLD_GRACE_MS, 10) == []
        held = connection.execute("SELECT held FROM users WHERE id = 'ann'").fetchone()
        assert held == (0,)
    finally:
        connection.close()


def test_findings_are_bounded(busy, raw, monkeypatch):
    monkeypatch.setattr("core.ledger.DRIFT_FINDINGS_MAX", 1)
    raw.execute("UPDATE users SET used = used + 1")
    report = busy.reconcile(repair=False)
    assert len(report.drifts) == 1 and report.truncated


def spend_log(request_id, user, spend, status="success", **fields):
    entry = {
        "request_id": f"chatcmpl-{request_id}",
        "litellm_call_id": request_id,
        "end_user": user,
        "user": "",
        "model": "openai/gpt-4o",
        "model_group": "gpt-4o",
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "spend": spend,
        "status": status,
    }
    entry.update(fields)
    return entry


def test_a_spend_log_row_reads_as_the_gateway_logs_it():
    record = usage_from_spend_log(spend_log("call-1", "ann", Decimal("0.00022500000000000002")))
    assert (record.request_id, record.user_id, record.model) == ("call-1", "ann", "gpt-4o")
    assert (record.tokens_input, record.tokens_output, record.cost) == (10, 20, usd("0.000225"))
    assert usage_from_spend_log(spend_log("call-2", "ann", Decimal(0), status="failure")) is None
    assert usage_from_spend_log(spend_log("call-3", None, Decimal(1))) is None
    with pytest.raises(ValueError, match="float"):
        usage_from_spend_log(spend_log("call-4", "ann", 0.5))


def test_backfill_records_missing_usage_once_and_reports_conflicts(busy, raw):
    entries = [
        spend_log("r1", "ann", Decimal("1.25"), prompt_tokens=1, completion_tokens=1),  # logged
        spend_log("lost-1", "ann", Decimal("0.75")),
        spend_log("r2", "bob", Decimal("9")),  # logged with a different cost
        spend_log("lost-2", "nobody", Decimal("1")),
        spend_log("lost-3", "ann", Decimal("-1")),
    ]
    report = busy.backfill_usage(entries)
    assert report.entries_read == 5
    assert report.created == ["lost-1"]
    assert report.refused == [
        ("r2", "logged with different content"),
        ("lost-2", "unknown user"),
        ("lost-3", "malformed spend log: spend must not be negative"),
    ]
    assert busy.user("ann").budget.used == usd("2")
    assert audit_rows(raw) == [("backfill", "lost-1", 0, usd("0.75"))]
    again = busy.backfill_usage(entries)
    assert again.created == [] and busy.user("ann").budget.used == usd("2")


def test_a_reset_summary_reads_exactly_the_rows_that_reset_closed(ledger, basic, clock):
    for user_id, spent in (("ann", "3"), ("bob", "5"), ("cy", "0"), ("dee", "5")):
        provision(ledger, user_id)
        if spent != "0":
            log(ledger, user_id, f"{user_id}-1", spent)
    clock.advance_to(APRIL)
    ledger.reset_budgets("2026-04")
    log(ledger, "ann", "ann-2", "1")
    clock.advance_to(MAY)
    ledger.reset_budgets("2026-05")
    april = ledger.closed_period_summary("2026-04", 2)
    assert (april.users, april.spend_total) == (4, usd(13))
    assert [(s.user_id, s.email, s.used) for s in april.top_spenders] == [
        ("bob", "bob@example.com", usd(5)),
        ("dee", "dee@example.com", usd(5)),
    ]
    may = ledger.closed_period_summary("2026-05", 10)
    assert (may.users, may.spend_total) == (4, usd(1))
    assert [s.user_id for s in may.top_spenders] == ["ann"]
    nothing = ledger.closed_period_summary("2026-06", 10)
    assert (nothing.users, nothing.spend_total, nothing.top_spenders) == (0, 0, [])
