"""monthly-budget-reset run for real in the Prefect harness on a real SQLite file, mailing a real
SMTP server (aiosmtpd)."""

import sqlite3
from contextlib import closing
from datetime import UTC, datetime

import pytest
from flow_helpers import Inbox, backdate_open_periods, seed_users, this_month, usd
from prefect import get_client
from prefect.flow_engine import run_flow
from prefect.states import Scheduled

from core.errors import Unavailable
from core.ledger import Ledger
from core.periods import next_label
from flows import reset as reset_flow
from flows.common import opened_ledger
from flows.reset import monthly_budget_reset
from service.cli import main as billing

# An earlier month for the seeded users' open periods: a reset due now must close something.
PAST = "2020-01"


def history(settings):
    path = settings.database_url.removeprefix("sqlite:///")
    with closing(sqlite3.connect(path)) as connection:
        return connection.execute(
            "SELECT user_id, label, used, closed_by FROM period_history ORDER BY user_id"
        ).fetchall()


def test_reset_closes_every_period_and_mails_the_admin_the_totals(flow_settings, smtp_inbox: Inbox):
    with opened_ledger(flow_settings) as ledger:
        seed_users(ledger, {"ann": "7.5", "bob": "0.25", "cy": "0", "dee": "2"})
    backdate_open_periods(flow_settings, PAST)
    month = this_month(flow_settings)
    result = monthly_budget_reset(period=month, top_spenders=2)
    assert (result["users_reset"], result["already_done"]) == (4, False)
    assert (result["users_closed"], result["spend_total"]) == (4, "9.75")
    assert [s["user_id"] for s in result["top_spenders"]] == ["ann", "dee"]
    [mail] = smtp_inbox.messages
    assert mail["To"] == "admin@example.com"
    assert mail["Subject"] == f"Budget reset {month}: done"
    body = mail.get_payload()
    assert "Users reset: 4" in body
    assert "total spend $9.75" in body
    assert "1. ann <ann@example.com>: $7.5" in body
    assert "2. dee <dee@example.com>: $2" in body
    assert "Failures: none" in body
    with opened_ledger(flow_settings) as ledger:
        ann = ledger.user("ann")
    assert (ann.period_label, ann.budget.used) == (month, 0)


def test_a_second_run_for_the_same_period_resets_nothing(flow_settings, smtp_inbox: Inbox):
    with opened_ledger(flow_settings) as ledger:
        seed_users(ledger, {"ann": "3"})
    backdate_open_periods(flow_settings, PAST)
    month = this_month(flow_settings)
    first = monthly_budget_reset(period=month)
    with opened_ledger(flow_settings) as ledger:
        ledger.log_usage("ann", "gpt-4o", "ann-r2", 1, 1, usd("1"), None)
    second = monthly_budget_reset(period=month)
    assert (first["users_reset"], first["already_done"]) == (1, False)
    assert (second["users_reset"], second["already_done"]) == (0, True)
    # The second run's summary is still that of the reset which closed the period.
    assert second["spend_total"] == first["spend_total"] == "3"
    assert len(history(flow_settings)) == 1
    with opened_ledger(flow_settings) as ledger:
        assert ledger.user("ann").budget.used == usd("1")
    subjects = [mail["Subject"] for mail in smtp_inbox.messages]
    assert subjects == [f"Budget reset {month}: done", f"Budget reset {month}: already done"]


def run_as_scheduled(flow, scheduled_at: datetime) -> dict:
    """Run ``flow`` as a flow run the scheduler created for ``scheduled_at`` (as a deployment's)."""
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(
            flow, parameters={}, state=Scheduled(scheduled_time=scheduled_at)
        )
    return run_flow(flow, flow_run=flow_run, parameters={})


@pytest.mark.parametrize(
    ("scheduled_at", "label"),
    [
        # 00:00 on 1 October in New York (EDT) is 04:00 UTC.
        (datetime(2026, 10, 1, 4, 0, tzinfo=UTC), "2026-10"),
        (datetime(2026, 10, 1, 3, 59, 59, tzinfo=UTC), "2026-09"),
    ],
)
def test_scheduled_reset_opens_the_month_of_its_schedule_in_the_budget_zone(
    flow_settings, monkeypatch, scheduled_at, label
):
    monkeypatch.setenv("BUDGET_TIMEZONE", "America/New_York")
    with opened_ledger(flow_settings) as ledger:
        seed_users(ledger, {"ann": "1"})
    backdate_open_periods(flow_settings, PAST)
    result = run_as_scheduled(monthly_budget_reset, scheduled_at)
    assert result["label"] == label
    assert [row[3] for row in history(flow_settings)] == [label]
    with opened_ledger(flow_settings) as ledger:
        assert ledger.user("ann").period_label == label


@pytest.mark.parametrize("period", ["2026-13", "Dec-2026", "1999-12", "9999-01"])
def test_a_malformed_label_fails_the_run_before_it_starts_and_the_admin_hears_of_it(
    flow_settings, smtp_inbox: Inbox, period
):
    with pytest.raises(Exception, match="period"):
        monthly_budget_reset(period=period)
    subjects = [mail["Subject"] for mail in smtp_inbox.messages]
    assert any("monthly-budget-reset is Failed" in subject for subject in subjects)


def test_the_readme_example_in_the_month_the_periods_began_is_refused_and_changes_nothing(
    flow_settings, smtp_inbox: Inbox
):
    """Run on 2026-12-06 as the README said, ``period=2026-12`` zeroed every user mid-month."""
    with opened_ledger(flow_settings) as ledger:
        seed_users(ledger, {"ann": "4"})
    month = this_month(flow_settings)
    for period in (month, None):  # a manual run without a period means this month too
        with pytest.raises(RuntimeError, match=f"next valid period is {next_label(month)}"):
            monthly_budget_reset(period=period)
    with opened_ledger(flow_settings) as ledger:
        assert ledger.user("ann").budget.used == usd("4")
    assert history(flow_settings) == []
    subjects = [mail["Subject"] for mail in smtp_inbox.messages]
    assert subjects.count(f"Budget reset {month}: FAILED") == 2


def test_a_month_that_has_not_begun_is_refused(flow_settings, smtp_inbox: Inbox):
    with opened_ledger(flow_settings) as ledger:
        seed_users(ledger, {"ann": "4"})
    backdate_open_periods(flow_settings, PAST)
    future = next_label(next_label(this_month(flow_settings)))
    with pytest.raises(RuntimeError, match="after the current month"):
        monthly_budget_reset(period=future)
    assert history(flow_settings) == []


def test_force_closes_every_open_period_and_the_admin_is_told(flow_settings, smtp_inbox: Inbox):
    with opened_ledger(flow_settings) as ledger:
        seed_users(ledger, {"ann": "4"})
    month = this_month(flow_settings)
    result = monthly_budget_reset(period=month, force=True)
    assert (result["users_reset"], result["forced"]) == (1, True)
    [mail] = smtp_inbox.messages
    assert mail["Subject"] == f"Budget reset {month}: FORCED"
    assert "FORCED: every open period was closed" in mail.get_payload()


def test_a_run_the_schedule_made_passes_when_nothing_is_due(
    flow_settings, smtp_inbox: Inbox, monkeypatch
):
    """Only Prefect's scheduler sets a run's ``auto_scheduled``; the test stands in for it."""
    with opened_ledger(flow_settings) as ledger:
        seed_users(ledger, {"ann": "4"})
    monkeypatch.setattr(reset_flow, "made_by_schedule", lambda: True)
    month = this_month(flow_settings)
    result = monthly_budget_reset()
    assert result["skipped"] is not None and "nothing is due" in result["skipped"]
    assert result["users_reset"] == 0
    [mail] = smtp_inbox.messages
    assert mail["Subject"] == f"Budget reset {month}: skipped"
    with opened_ledger(flow_settings) as ledger:
        assert ledger.user("ann").budget.used == usd("4")


def test_a_direct_run_is_not_one_the_schedule_made(flow_settings):
    with opened_ledger(flow_settings) as ledger:
        seed_users(ledger, {"ann": "4"})
    with pytest.raises(RuntimeError, match="nothing is due"):
        monthly_budget_reset()


def test_billing_reset_runs_the_flow_once(
    flow_settings, smtp_inbox: Inbox, capsys, process_logging_restored
):
    with opened_ledger(flow_settings) as ledger:
        seed_users(ledger, {"ann": "4"})
    month = this_month(flow_settings)
    with pytest.raises(SystemExit) as refused:
        billing(["reset", "--period", month])
    assert refused.value.code == 1
    assert "nothing is due" in capsys.readouterr().err
    billing(["reset", "--period", month, "--force"])
    assert '"users_reset": 1' in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        billing(["reset", "--period", "12-2026"])
    assert exit_info.value.code == 1


def test_a_busy_store_is_retried_and_the_reset_applies_once(flow_settings, monkeypatch):
    with opened_ledger(flow_settings) as ledger:
        seed_users(ledger, {"ann": "2"})
    backdate_open_periods(flow_settings, PAST)
    month = this_month(flow_settings)
    calls = []
    reset = Ledger.reset_budgets

    def busy_once(self, label, force):
        calls.append(label)
        if len(calls) == 1:
            raise Unavailable("database is busy; nothing was written")
        return reset(self, label, force)

    monkeypatch.setattr(Ledger, "reset_budgets", busy_once)
    result = monthly_budget_reset(period=month)
    assert calls == [month, month]
    assert (result["users_reset"], result["failures"]) == (1, [])
