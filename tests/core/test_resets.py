"""The reset rule (``core.resets``): which periods a reset closes, and which labels it refuses,
as a pure function and through the ledger on both stores."""

from datetime import UTC, datetime

import pytest
from core_helpers import APRIL, provision, usd

from core.errors import Invalid, ResetRefused
from core.resets import OpenPeriods, RefusalReason, ResetRequest, reset_refusal, valid_label


def request(label: str, current: str = "2026-12", force: bool = False) -> ResetRequest:
    return ResetRequest(label=label, apply_once=True, force=force, current_label=current)


@pytest.mark.parametrize(
    ("label", "earliest", "latest", "reason", "valid"),
    [
        # the README's example run on 2026-12-06, after the 2026-12 periods began
        ("2026-12", "2026-12", "2026-12", RefusalReason.NOTHING_DUE, "2027-01"),
        # a month that has not begun
        ("2027-03", "2026-11", "2026-12", RefusalReason.FUTURE, "2026-12"),
        ("2027-01", "2026-12", "2026-12", RefusalReason.FUTURE, "2027-01"),
        # back in time
        ("2026-10", "2026-09", "2026-11", RefusalReason.EARLIER_THAN_OPEN, "2026-12"),
    ],
)
def test_a_label_that_could_only_destroy_a_month_is_refused_naming_a_valid_one(
    label, earliest, latest, reason, valid
):
    refusal = reset_refusal(request(label), OpenPeriods(earliest, latest))
    assert refusal is not None
    assert refusal.details == {"reason": reason, "period": label, "valid_period": valid}
    assert f"the next valid period is {valid}" in refusal.message


@pytest.mark.parametrize(
    ("label", "earliest", "latest"),
    [
        ("2026-12", "2026-11", "2026-11"),  # the monthly reset, on time
        ("2026-12", "2026-11", "2026-12"),  # late: some users began 2026-12 already
        ("2026-12", "2026-01", "2026-11"),  # months were missed
        ("2026-11", "2026-10", "2026-11"),  # a past month, still later than what it closes
        ("2026-12", None, None),  # no users yet
    ],
)
def test_a_label_later_than_some_open_period_and_not_in_the_future_passes(label, earliest, latest):
    assert reset_refusal(request(label), OpenPeriods(earliest, latest)) is None


def test_force_and_unlabelled_resets_are_never_refused():
    periods = OpenPeriods("2026-12", "2026-12")
    assert reset_refusal(request("2030-01", force=True), periods) is None
    unlabelled = ResetRequest("2026-12", apply_once=False, force=False, current_label="2026-12")
    assert reset_refusal(unlabelled, periods) is None


def test_the_valid_label_is_this_month_while_a_period_is_older_else_the_next():
    assert valid_label("2026-12", OpenPeriods("2026-11", "2026-12")) == "2026-12"
    assert valid_label("2026-12", OpenPeriods("2026-12", "2026-12")) == "2027-01"
    assert valid_label("2026-12", OpenPeriods(None, None)) == "2027-01"


# -- through the ledger, on both stores -----------------------------------------------------


def totals(raw) -> tuple:
    users = raw.execute(
        "SELECT id, period_label, used, credits FROM users ORDER BY id"
    ).fetchall()
    tenants = raw.execute("SELECT id, used FROM tenants ORDER BY id").fetchall()
    history = raw.execute("SELECT COUNT(*) FROM period_history").fetchone()
    applied = raw.execute("SELECT COUNT(*) FROM applied_resets").fetchone()
    return users, tenants, history, applied


@pytest.mark.parametrize("label", ["2026-03", "2026-04", "2026-02"])
def test_a_refused_reset_changes_nothing(ledger, alice, raw, label):
    ledger.log_usage("alice", "gpt-4o", "r1", 1, 1, usd(3), None)
    before = totals(raw)
    with pytest.raises(ResetRefused) as refused:
        ledger.reset_budgets(label)
    assert refused.value.code == "reset_refused"
    assert refused.value.details["valid_period"] == "2026-04"
    assert totals(raw) == before


def test_a_late_reset_closes_only_the_periods_of_earlier_months(ledger, basic, raw, clock):
    provision(ledger, "march")
    ledger.log_usage("march", "gpt-4o", "m1", 1, 1, usd(3), None)
    clock.advance_to(APRIL)
    april_start_ms = provision(ledger, "april").period_start_ms  # after April began, before the reset
    ledger.log_usage("april", "gpt-4o", "a1", 1, 1, usd(2), None)
    ledger.grant_credit("april", usd(1), "welcome", "g1")

    result = ledger.reset_budgets("2026-04")

    assert (result.users_reset, result.already_done) == (1, False)
    march, april = ledger.user("march"), ledger.user("april")
    assert (march.period_label, march.budget.used) == ("2026-04", 0)
    assert (april.period_label, april.budget.used, april.budget.credits) == (
        "2026-04",
        usd(2),
        usd(1),
    )
    assert april.period_start_ms == april_start_ms  # its period stayed open
    assert april.budget.tenant_used == usd(2)  # the tenant keeps what the open period spent
    assert raw.execute("SELECT user_id, label, used FROM period_history").fetchall() == [
        ("march", "2026-03", usd(3))
    ]
    assert ledger.reconcile(repair=False).drifts == []


def test_force_applies_any_label_and_closes_every_open_period(ledger, alice, raw):
    ledger.log_usage("alice", "gpt-4o", "r1", 1, 1, usd(3), None)
    result = ledger.reset_budgets("2026-03", force=True)
    assert (result.users_reset, result.already_done) == (1, False)
    assert raw.execute("SELECT label, closed_by, used FROM period_history").fetchall() == [
        ("2026-03", "2026-03", usd(3))
    ]
    assert ledger.reset_budgets("2026-03", force=True).already_done  # still once per label


def test_an_applied_label_is_reported_done_before_the_rule_is_asked(ledger, alice, clock):
    clock.advance_to(APRIL)
    ledger.reset_budgets("2026-04")
    again = ledger.reset_budgets("2026-04")  # every period is 2026-04 now: the rule would refuse
    assert (again.users_reset, again.already_done) == (0, True)


def test_the_bare_reset_closes_every_open_period_now(ledger, alice, raw):
    ledger.log_usage("alice", "gpt-4o", "r1", 1, 1, usd(3), None)
    result = ledger.reset_budgets(None)
    assert (result.label, result.users_reset) == ("2026-03", 1)
    assert ledger.user("alice").budget.used == 0


def test_force_without_a_period_is_invalid(ledger, alice):
    with pytest.raises(Invalid) as invalid:
        ledger.reset_budgets(None, force=True)
    assert invalid.value.field == "force"


@pytest.mark.parametrize("label", ["2000-01", "9998-12"])
def test_every_read_works_after_a_reset_at_a_bound_of_the_labels(ledger, alice, clock, label):
    ledger.log_usage("alice", "gpt-4o", "r1", 1, 1, usd(3), None)
    clock.advance(1000)
    ledger.reset_budgets(label, force=True)
    clock.advance(1000)
    ledger.log_usage("alice", "gpt-4o", "r2", 1, 1, usd(1), None)
    view = ledger.user("alice")
    assert view.period_label == label
    end_ms = ledger.period_end_ms(view)
    year = datetime.fromtimestamp(end_ms / 1000, tz=UTC).year
    assert 2000 <= year <= 9999
    assert ledger.usage_summary("alice", None, None, "model").groups[0].cost == usd(1)
    assert ledger.usage_summary("alice", None, None, "day").groups[0].cost == usd(1)
    assert ledger.closed_period_summary(label, 10).spend_total == usd(3)
    assert ledger.reconcile(repair=False).drifts == []


def test_a_forced_reset_leaves_one_notice_for_the_admin(ledger, alice):
    ledger.reset_budgets("2026-03", force=True)
    ledger.reset_budgets("2026-03", force=True)  # already done: no second notice
    [notice] = ledger.pending_admin_notices(10)
    assert notice.subject == "Budget reset 2026-03 was FORCED"
    ledger.admin_notice_delivered(notice.id)
    assert ledger.pending_admin_notices(10) == []


def test_an_unforced_reset_leaves_no_notice(ledger, alice, clock):
    clock.advance_to(APRIL)
    ledger.reset_budgets("2026-04")
    ledger.reset_budgets(None)
    assert ledger.pending_admin_notices(10) == []
