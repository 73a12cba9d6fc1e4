"""The reset rule (``core.resets``): which periods a reset closes, and which labels it refuses,
as a pure function and through the ledger on both stores; and its bounded batches, stopped
between two and resumed, and beside concurrent writes."""

import threading
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from core_helpers import APRIL, TTL_SECONDS, open_test_store, provision, usd

from core.errors import Invalid, ResetRefused
from core.ledger import Ledger
from core.prices import load_price_table
from core.resets import (
    RESET_LANES_MAX,
    OpenPeriods,
    RefusalReason,
    ResetRequest,
    reset_refusal,
    valid_label,
)


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
    users = raw.execute("SELECT id, period_label, used, credits FROM users ORDER BY id").fetchall()
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
    april_start_ms = provision(
        ledger, "april"
    ).period_start_ms  # after April began, before the reset
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


# -- in bounded batches: resumed after a stop, beside concurrent writes ------------------------

BATCH_USERS = 2


@pytest.fixture
def batched(store, clock) -> Ledger:
    """A ledger whose resets visit ``BATCH_USERS`` users per batch, in as many lanes as the
    service runs (on PostgreSQL, three for seven users)."""
    return Ledger(
        store,
        load_price_table(),
        ZoneInfo("UTC"),
        TTL_SECONDS,
        clock_ms=clock,
        reset_batch_users_max=BATCH_USERS,
    )


def seven_users_with_usage(ledger) -> dict[str, int]:
    """Seven users over two tenants, user n having spent n dollars; their spend by user."""
    spent = {}
    for n in range(7):
        user_id = f"u{n}"
        provision(ledger, user_id, tenant_id=f"t{n % 2}")
        if n:
            ledger.log_usage(user_id, "gpt-4o", f"before-{n}", 1, 1, usd(n), None)
        spent[user_id] = usd(n)
    return spent


def closed_periods(raw, label: str) -> list[tuple]:
    return raw.execute(
        "SELECT user_id, label, used FROM period_history WHERE closed_by = ? ORDER BY user_id",
        (label,),
    ).fetchall()


def assert_every_usage_row_in_exactly_one_period(raw) -> None:
    """Each usage row carries the start of its user's open period or of one closed period, and
    every period's used is the sum of its rows (the counters and history, as reconcile reads
    them, follow)."""
    periods = {
        (user_id, start): used
        for user_id, start, used in raw.execute(
            "SELECT id, period_start, used FROM users"
            " UNION ALL SELECT user_id, period_start, used FROM period_history"
        ).fetchall()
    }
    assert (
        len(periods)
        == raw.execute(
            "SELECT (SELECT COUNT(*) FROM users) + (SELECT COUNT(*) FROM period_history)"
        ).fetchone()[0]
    )
    sums: dict[tuple, int] = {}
    for user_id, start, cost in raw.execute("SELECT user_id, period_start, cost FROM usage"):
        assert (user_id, start) in periods, (user_id, start)
        sums[(user_id, start)] = sums.get((user_id, start), 0) + cost
    assert {key: used for key, used in periods.items() if used} == sums


def test_a_reset_in_batches_closes_every_users_period_once(batched, basic, raw, clock):
    spent = seven_users_with_usage(batched)
    clock.advance_to(APRIL)
    result = batched.reset_budgets("2026-04")
    assert (result.users_reset, result.already_done) == (7, False)
    assert closed_periods(raw, "2026-04") == [
        (user_id, "2026-03", used) for user_id, used in sorted(spent.items())
    ]
    assert raw.execute("SELECT used FROM tenants ORDER BY id").fetchall() == [(0,), (0,)]
    summary = batched.closed_period_summary("2026-04", 10)
    assert (summary.users, summary.spend_total) == (7, usd(21))
    assert batched.reset_budgets("2026-04").already_done
    assert batched.reconcile(repair=False).drifts == []


def test_a_reset_stopped_between_batches_resumes_without_closing_twice_or_skipping(
    batched, basic, raw, clock, database_url, store
):
    spent = seven_users_with_usage(batched)
    clock.advance_to(APRIL)
    request = ResetRequest("2026-04", apply_once=True, force=False, current_label="2026-04")
    run = store.start_reset(request, clock())
    assert run.carries_request
    assert store.reset_batch(run.run_id, 0, BATCH_USERS, clock()) is False
    assert store.reset_batch(run.run_id, 0, BATCH_USERS, clock()) is False
    # Stopped here, four users in: every row is true between batches.
    assert [row[0] for row in closed_periods(raw, "2026-04")] == ["u0", "u1", "u2", "u3"]
    assert batched.reconcile(repair=False).drifts == []
    assert batched.user("u4").budget.tenant_used == usd(4 + 6)  # t0 keeps u4's and u6's spend
    clock.advance(1000)
    batched.log_usage("u1", "gpt-4o", "between-1", 1, 1, usd("0.5"), None)  # its new period
    batched.log_usage("u5", "gpt-4o", "between-5", 1, 1, usd("0.5"), None)  # its old period
    spent["u5"] += usd("0.5")
    assert batched.user("u1").budget.used == usd("0.5")
    store.close()  # the process that ran the reset is gone

    reopened = open_test_store(database_url, clock)
    try:
        ledger = Ledger(reopened, load_price_table(), ZoneInfo("UTC"), TTL_SECONDS, clock_ms=clock)
        result = ledger.reset_budgets("2026-04")  # the flow's retry, or the operator's
        assert (result.users_reset, result.already_done) == (7, False)
        assert closed_periods(raw, "2026-04") == [
            (user_id, "2026-03", used) for user_id, used in sorted(spent.items())
        ]
        assert ledger.user("u1").budget.used == usd("0.5")
        assert ledger.user("u1").budget.tenant_used == usd("0.5")
        assert ledger.user("u5").budget.used == 0
        summary = ledger.closed_period_summary("2026-04", 10)
        assert (summary.users, summary.spend_total) == (7, usd("21.5"))
        assert ledger.reset_budgets("2026-04").already_done
        assert raw.execute("SELECT label, users_reset FROM applied_resets").fetchall() == [
            ("2026-04", 7)
        ]
        assert_every_usage_row_in_exactly_one_period(raw)
        assert ledger.reconcile(repair=False).drifts == []
    finally:
        reopened.close()


def test_an_unfinished_reset_is_finished_before_another_starts(batched, basic, raw, clock, store):
    seven_users_with_usage(batched)
    request = ResetRequest("2026-03", apply_once=True, force=True, current_label="2026-03")
    run = store.start_reset(request, clock())
    assert store.reset_batch(run.run_id, 0, BATCH_USERS, clock()) is False
    clock.advance(1000)

    bare = batched.reset_budgets(None)  # finishes the forced run, then closes everything again

    assert (bare.label, bare.users_reset) == ("2026-03", 7)
    assert raw.execute("SELECT label, users_reset FROM applied_resets").fetchall() == [
        ("2026-03", 7)
    ]
    assert raw.execute(
        "SELECT COUNT(*), COUNT(DISTINCT user_id) FROM period_history"
    ).fetchone() == (14, 7)
    [notice] = batched.pending_admin_notices(10)  # the forced run's, once, with its total
    assert "(7 users)" in notice.body
    assert_every_usage_row_in_exactly_one_period(raw)
    assert batched.reconcile(repair=False).drifts == []


def test_a_refusal_starts_no_run(batched, alice, raw):
    with pytest.raises(ResetRefused):
        batched.reset_budgets("2026-04")
    assert raw.execute("SELECT COUNT(*) FROM reset_runs").fetchone() == (0,)


WRITERS = 3
WRITES_PER_WRITER = 40


def test_writes_from_another_store_during_a_batched_reset_each_land_in_one_period(
    batched, basic, raw, clock, database_url
):
    spent = seven_users_with_usage(batched)
    for n in range(7, 30):
        provision(batched, f"u{n}", tenant_id=f"t{n % 2}")
    clock.advance_to(APRIL)
    other = open_test_store(database_url, clock)  # its own writer: another process's, in effect
    try:
        writer_ledger = Ledger(
            other, load_price_table(), ZoneInfo("UTC"), TTL_SECONDS, clock_ms=clock
        )
        failures: list[BaseException] = []

        def write(writer: int) -> None:
            try:
                for n in range(WRITES_PER_WRITER):
                    clock.advance(1)
                    user_id = f"u{(writer * 7 + n) % 30}"
                    writer_ledger.log_usage(
                        user_id, "gpt-4o", f"w{writer}-{n}", 1, 1, usd("0.01"), None
                    )
            except BaseException as error:
                failures.append(error)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(WRITERS)]
        for thread in threads:
            thread.start()
        result = batched.reset_budgets("2026-04")
        for thread in threads:
            thread.join()
    finally:
        other.close()
    assert failures == []
    assert (result.users_reset, result.already_done) == (30, False)
    assert raw.execute(
        "SELECT COUNT(*), COUNT(DISTINCT user_id) FROM period_history WHERE closed_by = '2026-04'"
    ).fetchone() == (30, 30)
    total = raw.execute("SELECT SUM(cost) FROM usage").fetchone()[0]
    assert total == sum(spent.values()) + WRITERS * WRITES_PER_WRITER * usd("0.01")
    assert_every_usage_row_in_exactly_one_period(raw)
    assert batched.reconcile(repair=False).drifts == []


# -- in lanes: contiguous ranges of ids, side by side on PostgreSQL ----------------------------


def lanes_of(raw, run_id: int) -> list[tuple]:
    return raw.execute(
        "SELECT lane, users_after, users_upto, users_reset, finished FROM reset_lanes"
        " WHERE run_id = ? ORDER BY lane",
        (run_id,),
    ).fetchall()


def test_the_lanes_of_a_run_cover_every_user_id_once(batched, basic, raw, clock, backend, store):
    spent = seven_users_with_usage(batched)
    clock.advance_to(APRIL)
    request = ResetRequest(
        "2026-04", True, False, "2026-04", RESET_LANES_MAX, batch_users_max=BATCH_USERS
    )
    run = store.start_reset(request, clock())
    # SQLite has one writer: its runs have one lane, whatever lanes_max asks.
    assert request.lane_count(7) == 3
    assert run.lanes == (3 if backend == "postgres" else 1)
    lanes = lanes_of(raw, run.run_id)
    assert [lane[0] for lane in lanes] == list(range(run.lanes))
    assert lanes[0][1] == "" and lanes[-1][2] is None
    for before, after in zip(lanes, lanes[1:], strict=False):
        assert after[1] == before[2]  # each lane begins where the one before ends

    result = batched.reset_budgets("2026-04")  # finishes the run it finds, lane by lane

    assert (result.users_reset, result.already_done) == (7, False)
    assert closed_periods(raw, "2026-04") == [
        (user_id, "2026-03", used) for user_id, used in sorted(spent.items())
    ]
    lanes = lanes_of(raw, run.run_id)
    assert all(lane[4] for lane in lanes)
    assert sum(lane[3] for lane in lanes) == 7
    assert_every_usage_row_in_exactly_one_period(raw)
    assert batched.reconcile(repair=False).drifts == []


def test_lanes_stopped_at_different_points_resume_each_from_its_own(
    batched, basic, raw, clock, store, database_url
):
    spent = seven_users_with_usage(batched)
    clock.advance_to(APRIL)
    request = ResetRequest(
        "2026-04", True, True, "2026-04", RESET_LANES_MAX, batch_users_max=BATCH_USERS
    )
    run = store.start_reset(request, clock())
    # The last lane one batch in, lane 0 two (one lane: three in all), any other not begun.
    for lane in (run.lanes - 1, 0, 0):
        assert store.reset_batch(run.run_id, lane, BATCH_USERS, clock()) is False
    assert store.finish_reset(run.run_id, clock()) is None
    store.close()  # the process that ran the reset is gone

    reopened = open_test_store(database_url, clock)
    try:
        ledger = Ledger(reopened, load_price_table(), ZoneInfo("UTC"), TTL_SECONDS, clock_ms=clock)
        result = ledger.reset_budgets("2026-04")
        assert (result.users_reset, result.already_done) == (7, False)
        assert closed_periods(raw, "2026-04") == [
            (user_id, "2026-03", used) for user_id, used in sorted(spent.items())
        ]
        assert raw.execute("SELECT label, users_reset FROM applied_resets").fetchall() == [
            ("2026-04", 7)
        ]
        [notice] = ledger.pending_admin_notices(10)  # forced: one notice, with the total
        assert "(7 users)" in notice.body
        assert_every_usage_row_in_exactly_one_period(raw)
        assert ledger.reconcile(repair=False).drifts == []
    finally:
        reopened.close()


def start_run_as_the_previous_release(raw, clock, backend) -> int:
    """A run recorded as a worker of the previous release did: no lanes, the run's own cursor."""
    apply_once, forced = (True, False) if backend == "postgres" else (1, 0)
    raw.execute(
        "INSERT INTO reset_runs (label, apply_once, forced, close_before, users_after,"
        " started_at) VALUES ('2026-04', ?, ?, '2026-04', '', ?)",
        (apply_once, forced, clock()),
    )
    return raw.execute("SELECT id FROM reset_runs").fetchone()[0]


def test_a_run_the_previous_release_started_is_finished_in_one_lane(
    batched, basic, raw, clock, backend
):
    spent = seven_users_with_usage(batched)
    clock.advance_to(APRIL)
    run_id = start_run_as_the_previous_release(raw, clock, backend)

    result = batched.reset_budgets("2026-04")

    assert (result.users_reset, result.already_done) == (7, False)
    assert [lane[0] for lane in lanes_of(raw, run_id)] == [0]
    assert closed_periods(raw, "2026-04") == [
        (user_id, "2026-03", used) for user_id, used in sorted(spent.items())
    ]
    assert_every_usage_row_in_exactly_one_period(raw)


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_the_previous_releases_batch_function_works_over_lanes(batched, basic, raw, clock, backend):
    """A worker of the previous release, mid-deploy, calls ``ledger_reset_batch`` until the
    run is finished."""
    spent = seven_users_with_usage(batched)
    clock.advance_to(APRIL)
    run_id = start_run_as_the_previous_release(raw, clock, backend)
    batches_max = 7 // BATCH_USERS + 3  # the lane's batches, its last (empty), the finish

    for _ in range(batches_max):
        label, users_reset, finished = raw.execute(
            "SELECT label, users_reset, finished FROM ledger_reset_batch(?, ?, ?)",
            (run_id, BATCH_USERS, clock()),
        ).fetchone()
        if finished:
            break

    assert (label, users_reset, finished) == ("2026-04", 7, True)
    assert raw.execute("SELECT label, users_reset FROM applied_resets").fetchall() == [
        ("2026-04", 7)
    ]
    assert closed_periods(raw, "2026-04") == [
        (user_id, "2026-03", used) for user_id, used in sorted(spent.items())
    ]
    assert batched.reset_budgets("2026-04").already_done
    assert_every_usage_row_in_exactly_one_period(raw)
