"""Alert thresholds (core/alerts.py) and the outbox the store writes with each usage."""

import sqlite3
import threading

import pytest
from core_helpers import APRIL, provision, usd
from pg_testing import PgRaw

from core.accounts import Tenant
from core.alerts import AlertChannel, AlertSubject, alert_message, thresholds_crossed


@pytest.mark.parametrize(
    ("before", "after", "limit", "crossed"),
    [
        ("0", "7.99", "10", ()),
        ("0", "8", "10", (80,)),
        ("7.99", "8.000000001", "10", (80,)),
        ("8", "9.99", "10", ()),
        ("8", "10", "10", (100,)),
        ("0", "12", "10", (80, 100)),
        ("10", "11", "10", ()),
        ("0", "0.000000001", "0", (80, 100)),
        ("0.1", "0.2", "0", ()),
        ("5", "5", "10", ()),
    ],
)
def test_thresholds_crossed_exactly(before, after, limit, crossed):
    assert thresholds_crossed(usd(before), usd(after), usd(limit)) == crossed


def alert_rows(raw: sqlite3.Connection | PgRaw) -> list[tuple]:
    return raw.execute(
        "SELECT subject, subject_id, period_label, threshold_percent, used, limit_amount, state"
        " FROM alerts ORDER BY id"
    ).fetchall()


def log(ledger, user_id, request_id, cost):
    return ledger.log_usage(user_id, "gpt-4o", request_id, 1, 1, usd(cost), None)


def test_usage_crossing_80_and_100_percent_writes_one_alert_each(ledger, alice, raw):
    log(ledger, "alice", "r1", "7")
    assert alert_rows(raw) == []
    log(ledger, "alice", "r2", "1.5")
    log(ledger, "alice", "r3", "0.1")
    log(ledger, "alice", "r4", "2")
    log(ledger, "alice", "r5", "2")
    assert alert_rows(raw) == [
        ("user", "alice", "2026-03", 80, usd("8.5"), usd(10), "pending"),
        ("user", "alice", "2026-03", 100, usd("10.6"), usd(10), "pending"),
    ]


def test_a_replayed_usage_raises_no_second_alert(ledger, alice, raw):
    log(ledger, "alice", "r1", "9")
    log(ledger, "alice", "r1", "9")
    assert [row[3] for row in alert_rows(raw)] == [80]


def test_a_threshold_crossed_again_in_the_period_is_not_announced_twice(ledger, alice, raw):
    log(ledger, "alice", "r1", "8")
    ledger.grant_credit("alice", usd(10), "goodwill", "g1")
    log(ledger, "alice", "r2", "8.5")
    assert [row[3] for row in alert_rows(raw)] == [80]


def test_the_next_period_alerts_again(ledger, alice, raw, clock):
    log(ledger, "alice", "r1", "8")
    clock.advance_to(APRIL)
    ledger.reset_budgets("2026-04")
    log(ledger, "alice", "r2", "8")
    assert [(row[2], row[3]) for row in alert_rows(raw)] == [("2026-03", 80), ("2026-04", 80)]


def test_tenant_cap_crossings_are_alerts_of_the_tenant(ledger, basic, raw):
    ledger.put_tenant(Tenant("acme", "Acme", usd(10)))
    provision(ledger, "ann", tenant_id="acme")
    provision(ledger, "bob", tenant_id="acme")
    log(ledger, "ann", "r1", "5")
    log(ledger, "bob", "r2", "3")
    assert alert_rows(raw) == [("tenant", "acme", "2026-03", 80, usd(8), usd(10), "pending")]


TENANT_USERS = 8


def test_concurrent_usage_of_a_tenant_crosses_each_threshold_once(ledger, basic, raw):
    """Eight users of a $10 tenant log $1.25 each at once: whichever order they commit in, the
    usage that takes the tenant from $7.50 to $8.75 raises 80 % and the last one 100 %."""
    ledger.put_tenant(Tenant("acme", "Acme", usd(10)))
    users = [f"u{number}" for number in range(TENANT_USERS)]
    for user_id in users:
        provision(ledger, user_id, tenant_id="acme")
    start = threading.Barrier(TENANT_USERS)
    errors: list[BaseException] = []

    def client(user_id: str) -> None:
        try:
            start.wait()
            log(ledger, user_id, f"{user_id}-r1", "1.25")
        except BaseException as error:  # noqa: BLE001 - handed to the main thread
            errors.append(error)

    threads = [threading.Thread(target=client, args=(user_id,)) for user_id in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert alert_rows(raw) == [
        ("tenant", "acme", "2026-03", 80, usd("8.75"), usd(10), "pending"),
        ("tenant", "acme", "2026-03", 100, usd(10), usd(10), "pending"),
    ]


def test_a_refused_usage_leaves_no_alert(ledger, alice, raw):
    log(ledger, "alice", "r1", "9")
    with pytest.raises(Exception):  # noqa: B017 - the conflict's type is tested in test_ledger
        log(ledger, "alice", "r1", "10")
    assert len(alert_rows(raw)) == 1


def test_pending_alerts_carry_the_users_email_and_delivery_is_recorded(ledger, alice):
    log(ledger, "alice", "r1", "9")
    [alert] = ledger.pending_alerts(0, 10)
    assert (alert.subject, alert.subject_id, alert.email) == (
        AlertSubject.USER,
        "alice",
        "alice@example.com",
    )
    assert alert.dedup_key == f"cloudfreedom-alert-{alert.id}"
    ledger.record_alert_attempt(alert.id, frozenset({AlertChannel.EMAIL}), "ConnectError: refused")
    [again] = ledger.pending_alerts(0, 10)
    assert (again.attempts, again.channels_done) == (1, frozenset({AlertChannel.EMAIL}))
    ledger.record_alert_attempt(alert.id, frozenset({AlertChannel.WEBHOOK}), None)
    assert ledger.pending_alerts(0, 10) == []


def test_a_users_alert_speaks_to_the_user_with_figures_and_period(ledger, alice):
    log(ledger, "alice", "r1", "10")
    subjects = [alert_message(alert)[0] for alert in ledger.pending_alerts(0, 10)]
    assert subjects == [
        "You have used 80% of your budget for 2026-03",
        "You have used up your budget for 2026-03",
    ]
    body = alert_message(ledger.pending_alerts(0, 10)[1])[1]
    assert body.startswith("You have used $10 of your $10 budget for 2026-03")


def test_pending_alerts_page_by_id(ledger, alice):
    log(ledger, "alice", "r1", "10")
    first, second = ledger.pending_alerts(0, 10)
    assert ledger.pending_alerts(0, 1) == [first]
    assert ledger.pending_alerts(first.id, 10) == [second]
    assert ledger.pending_alerts(second.id, 10) == []
