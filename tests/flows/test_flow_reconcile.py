"""reconcile-usage run for real in the Prefect harness on a real SQLite file, mailing a real SMTP
server. LiteLLM's spend logs come from ``litellm_fake`` (faked at the HTTP boundary: LiteLLM is a
paid-service proxy that needs its own database)."""

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from flow_helpers import Inbox, seed_users, usd
from litellm_fake import LITELLM_KEY, FakeLiteLLM, fake_litellm, spend_row

from flows.common import opened_ledger
from flows.reconcile import reconcile_usage
from service.cli import main as billing


@pytest.fixture
def litellm() -> Iterator[FakeLiteLLM]:
    with fake_litellm() as fake:
        yield fake


def database(settings) -> sqlite3.Connection:
    return sqlite3.connect(settings.database_url.removeprefix("sqlite:///"), isolation_level=None)


def test_a_consistent_ledger_reports_nothing_and_mails_nobody(flow_settings, smtp_inbox: Inbox):
    with opened_ledger(flow_settings) as ledger:
        seed_users(ledger, {"ann": "1", "bob": "2"})
    result = reconcile_usage()
    assert (result["drifts"], result["repaired"], result["backfill"]) == ([], [], None)
    assert result["reservations_deleted"] == 0
    assert smtp_inbox.messages == []


def test_drift_is_reported_then_repaired_with_audit(
    flow_settings, smtp_inbox: Inbox, capsys, process_logging_restored
):
    with opened_ledger(flow_settings) as ledger:
        seed_users(ledger, {"ann": "1.5", "bob": "2"})
    connection = database(flow_settings)
    try:
        connection.execute("UPDATE users SET used = used + 250000000 WHERE id = 'ann'")
        connection.execute("UPDATE tenants SET used = 1 WHERE id = 't1'")
        reported = reconcile_usage(repair=False)
        assert [(d["check"], d["subject_id"]) for d in reported["drifts"]] == [
            ("user_used", "ann"),
            ("tenant_used", "t1"),
        ]
        assert reported["repaired"] == []
        [mail] = smtp_inbox.messages
        assert mail["Subject"] == "Usage reconciliation found differences"
        assert "user_used: ann records $1.75, facts say $1.5" in mail.get_payload()

        billing(["reconcile", "--repair"])
        assert '"check": "user_used"' in capsys.readouterr().out
        audit = connection.execute(
            "SELECT check_name, subject_id, recorded, expected FROM ledger_repairs ORDER BY id"
        ).fetchall()
        assert audit == [
            ("user_used", "ann", usd("1.75"), usd("1.5")),
            ("tenant_used", "t1", 1, usd("3.5")),
        ]
        assert reconcile_usage()["drifts"] == []
    finally:
        connection.close()


def test_usage_missing_from_the_ledger_is_backfilled_from_litellm_once(
    flow_settings, monkeypatch, litellm: FakeLiteLLM, smtp_inbox: Inbox
):
    monkeypatch.setenv("LITELLM_URL", litellm.url)
    monkeypatch.setenv("LITELLM_ADMIN_KEY", LITELLM_KEY)
    with opened_ledger(flow_settings) as ledger:
        seed_users(ledger, {"ann": "1"})
    now = datetime.now(UTC).isoformat()
    litellm.rows = [
        spend_row("chatcmpl-1", "ann-r1", now, 1.0),  # reached log-usage: the seeded row
        spend_row("chatcmpl-2", "ann-lost", now, 0.00022500000000000002),  # never did
    ]
    first = reconcile_usage(litellm_days=2)
    assert first["backfill"]["created"] == ["ann-lost"]
    assert first["backfill"]["refused"] == []
    assert [path for path, _ in litellm.queries] == ["/spend/logs/v2", "/spend/logs/v2"]
    second = reconcile_usage(litellm_days=2)
    assert second["backfill"]["created"] == []
    with opened_ledger(flow_settings) as ledger:
        assert ledger.user("ann").budget.used == usd("1.000225")
    [mail] = smtp_inbox.messages  # only the run that found something
    assert "Usage backfilled: 1" in mail.get_payload()
    assert LITELLM_KEY not in mail.get_payload()
