"""The ledger over a real SQLite file: provisioning, holds, usage, releases, expiry, credits, resets.

Over 500 lines for one job: the ``Ledger``'s public operations end to end, ~50 short tests in
one section per operation; the pure rules each have their own module (test_budget, test_usage,
test_resets, ...), and both stores are held to the same behaviour in test_store_*.
"""

import gc
from datetime import UTC, datetime

import pytest
from core_helpers import APRIL, TTL_SECONDS, ms, provision, usd

from core.accounts import Product, Tenant
from core.budget import BudgetStatus, UserStatus
from core.errors import (
    Duplicate,
    IdempotencyConflict,
    Invalid,
    LedgerError,
    NotFound,
    ReservationClosed,
)
from core.reservations import ReservationState

TTL_MS = TTL_SECONDS * 1000


def figures(ledger, user_id):
    budget = ledger.user(user_id).budget
    return budget.total, budget.used, budget.held, budget.remaining


def reservation_rows(raw):
    return raw.execute(
        "SELECT request_id, user_id, amount, state FROM reservations ORDER BY request_id"
    ).fetchall()


def usage_rows(raw):
    return raw.execute(
        "SELECT request_id, user_id, model, tokens_input, tokens_output, cost, response_time_ms"
        " FROM usage ORDER BY request_id"
    ).fetchall()


def hold(ledger, user_id, request_id, amount):
    return ledger.check_budget(user_id, None, 0, 0, amount, request_id)


def log(ledger, user_id, request_id, cost, model="gpt-4o", tokens=(10, 20), response_time_ms=100):
    return ledger.log_usage(
        user_id, model, request_id, tokens[0], tokens[1], cost, response_time_ms
    )


# -- provisioning ---------------------------------------------------------------------------


def test_provisioned_user_opens_a_period_with_the_plan_budget(ledger, alice, clock):
    assert alice.id == "alice"
    assert alice.email == "alice@example.com"
    assert alice.status is UserStatus.ACTIVE
    assert alice.period_label == "2026-03"
    assert alice.period_start_ms == clock() == alice.created_at_ms
    assert ledger.period_end_ms(alice) == ms(datetime(2026, 4, 1, tzinfo=UTC))
    assert (alice.budget.total, alice.budget.used, alice.budget.held) == (usd(10), 0, 0)
    assert alice.budget.remaining == usd(10)
    assert alice.budget.tenant_cap is None


def test_password_is_stored_hashed(raw, alice):
    (stored,) = raw.execute("SELECT password_hash FROM users WHERE id = 'alice'").fetchone()
    assert stored.startswith("scrypt$") and "correct horse battery" not in stored


def test_duplicate_user_id_is_refused(ledger, alice):
    with pytest.raises(Duplicate) as caught:
        provision(ledger, "alice", email="other@example.com")
    assert caught.value.details["field"] == "user_id"


def test_duplicate_email_is_refused_case_insensitively(ledger, alice, raw):
    with pytest.raises(Duplicate) as caught:
        provision(ledger, "alice2", email="ALICE@Example.COM")
    assert caught.value.details["field"] == "email"
    assert raw.execute("SELECT COUNT(*) FROM users").fetchone() == (1,)


def test_unknown_product_is_invalid(ledger, basic, raw):
    with pytest.raises(Invalid) as caught:
        provision(ledger, "bob", product_id="gold")
    assert caught.value.field == "product_id"
    assert raw.execute("SELECT COUNT(*) FROM users").fetchone() == (0,)
    assert raw.execute("SELECT COUNT(*) FROM tenants").fetchone() == (0,)


def test_unknown_tenant_is_created_without_a_cap(ledger, basic, raw):
    provision(ledger, "bob", tenant_id="acme")
    assert raw.execute("SELECT id, name, monthly_budget, used, held FROM tenants").fetchall() == [
        ("acme", "acme", None, 0, 0)
    ]
    provision(ledger, "carol", tenant_id="acme")
    assert raw.execute("SELECT COUNT(*) FROM tenants").fetchone() == (1,)


def test_generated_user_id(ledger, basic):
    view = ledger.provision_user("dave@example.com", "long enough pw", "basic", "t1", None)
    assert view.id.startswith("usr_") and len(view.id) == len("usr_") + 16


def test_put_product_creates_then_replaces(ledger, basic):
    assert ledger.put_product(Product("basic", "Basic+", usd(20))) is False
    assert ledger.put_product(Product("alpha", "Alpha", usd("0.5"))) is True
    assert ledger.list_products() == [
        Product("alpha", "Alpha", usd("0.5")),
        Product("basic", "Basic+", usd(20)),
    ]


def test_plan_change_changes_the_total(ledger, alice):
    ledger.put_product(Product("gold", "Gold", usd(50)))
    view = ledger.update_user("alice", None, "gold")
    assert view.product_id == "gold" and view.budget.total == usd(50)
    with pytest.raises(Invalid):
        ledger.update_user("alice", None, "platinum")
    with pytest.raises(NotFound):
        ledger.update_user("nobody", UserStatus.SUSPENDED, None)


def test_unknown_user_is_not_found(ledger, basic):
    with pytest.raises(NotFound):
        ledger.user("nobody")
    with pytest.raises(NotFound):
        ledger.check_budget("nobody", None, 0, 0, usd(1), None)
    with pytest.raises(NotFound):
        hold(ledger, "nobody", "r1", usd(1))
    with pytest.raises(NotFound):
        log(ledger, "nobody", "r1", usd(1))
    with pytest.raises(NotFound):
        ledger.grant_credit("nobody", usd(1), "x", "g1")


def test_refused_writes_leave_no_reference_cycles(ledger, alice):
    """A refused write is an everyday answer (404, 409). Its exception must not hold the frames
    that raised it in a cycle: only the cyclic collector frees those, with the GIL held."""
    log(ledger, "alice", "r1", usd(1))
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what any collection finds unreachable stays in gc.garbage
    try:
        for _ in range(3):
            with pytest.raises(NotFound):
                log(ledger, "nobody", "r2", usd(1))
            with pytest.raises(IdempotencyConflict):
                log(ledger, "alice", "r1", usd(2))
            with pytest.raises(NotFound):
                hold(ledger, "nobody", "r3", usd(1))
        gc.collect()
        cycled = [found for found in gc.garbage if isinstance(found, LedgerError)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert cycled == []


# -- checks and holds -----------------------------------------------------------------------


def test_check_without_request_id_never_writes_a_hold(ledger, alice, raw):
    result = ledger.check_budget("alice", None, 0, 0, usd(3), None)
    assert result.allowed and result.status is BudgetStatus.ACTIVE and result.message == "OK"
    assert result.reservation is None
    assert reservation_rows(raw) == []
    assert figures(ledger, "alice") == (usd(10), 0, 0, usd(10))
    assert raw.execute("SELECT held FROM users").fetchone() == (0,)


def test_check_is_priced_from_the_table_when_no_estimate_is_given(ledger, alice):
    result = ledger.check_budget("alice", "openai/gpt-4o", 10, 20, None, "r1")
    assert result.reservation.amount == 225_000
    assert result.budget.held == 225_000


def test_check_of_an_unpriced_model_needs_an_estimate(ledger, alice):
    with pytest.raises(Invalid) as caught:
        ledger.check_budget("alice", "no-such-model", 10, 20, None, "r1")
    assert caught.value.field == "cost_estimate"
    with pytest.raises(Invalid):
        ledger.check_budget("alice", None, 10, 20, None, None)


def test_hold_reduces_remaining(ledger, alice, raw, clock):
    result = hold(ledger, "alice", "r1", usd(3))
    assert result.allowed
    assert result.reservation.request_id == "r1"
    assert result.reservation.amount == usd(3)
    assert result.reservation.state is ReservationState.OPEN
    assert result.reservation.expires_at_ms == clock() + TTL_MS
    assert result.budget.held == usd(3) and result.budget.remaining == usd(7)
    assert figures(ledger, "alice") == (usd(10), 0, usd(3), usd(7))
    assert reservation_rows(raw) == [("r1", "alice", usd(3), "open")]


def test_same_request_id_same_amount_is_the_same_hold(ledger, alice, raw, clock):
    first = hold(ledger, "alice", "r1", usd(3))
    clock.advance(1000)
    again = hold(ledger, "alice", "r1", usd(3))
    assert again.allowed
    assert again.reservation == first.reservation
    assert figures(ledger, "alice") == (usd(10), 0, usd(3), usd(7))
    assert reservation_rows(raw) == [("r1", "alice", usd(3), "open")]


def test_same_request_id_different_amount_or_user_conflicts(ledger, alice, raw):
    provision(ledger, "bob")
    hold(ledger, "alice", "r1", usd(3))
    with pytest.raises(IdempotencyConflict):
        hold(ledger, "alice", "r1", usd(4))
    with pytest.raises(IdempotencyConflict):
        hold(ledger, "bob", "r1", usd(3))
    assert reservation_rows(raw) == [("r1", "alice", usd(3), "open")]
    assert figures(ledger, "alice")[2] == usd(3)
    assert figures(ledger, "bob")[2] == 0


def test_hold_that_does_not_fit_is_refused_and_not_placed(ledger, alice, raw):
    result = hold(ledger, "alice", "r1", usd("10.000000001"))
    assert not result.allowed and result.status is BudgetStatus.EXCEEDED
    assert result.message == "Budget exceeded"
    assert result.reservation is None
    assert reservation_rows(raw) == []
    assert hold(ledger, "alice", "r2", usd(10)).allowed
    assert not hold(ledger, "alice", "r3", 0).allowed


def test_suspended_user_gets_no_hold(ledger, alice, raw):
    view = ledger.update_user("alice", UserStatus.SUSPENDED, None)
    assert view.status is UserStatus.SUSPENDED
    result = hold(ledger, "alice", "r1", usd(1))
    assert result.status is BudgetStatus.SUSPENDED and result.message == "Account suspended"
    assert reservation_rows(raw) == []
    ledger.update_user("alice", UserStatus.ACTIVE, None)
    assert hold(ledger, "alice", "r1", usd(1)).allowed


# -- usage ----------------------------------------------------------------------------------


def test_log_usage_settles_the_hold(ledger, alice, raw):
    hold(ledger, "alice", "r1", usd(3))
    outcome = log(ledger, "alice", "r1", usd("2.5"))
    assert outcome.created is True
    assert outcome.budget.used == usd("2.5") and outcome.budget.held == 0
    assert figures(ledger, "alice") == (usd(10), usd("2.5"), 0, usd("7.5"))
    assert reservation_rows(raw) == [("r1", "alice", usd(3), "settled")]
    assert raw.execute("SELECT used, held FROM users").fetchone() == (usd("2.5"), 0)
    assert raw.execute("SELECT used, held FROM tenants").fetchone() == (usd("2.5"), 0)


def test_log_usage_without_a_hold(ledger, alice, raw):
    outcome = log(ledger, "alice", "r1", None, model="gpt-4o", tokens=(10, 20))
    assert outcome.created and outcome.budget.used == 225_000
    assert usage_rows(raw) == [("r1", "alice", "gpt-4o", 10, 20, 225_000, 100)]


def test_log_usage_of_an_unpriced_model_needs_a_cost(ledger, alice, raw):
    with pytest.raises(Invalid) as caught:
        log(ledger, "alice", "r1", None, model="no-such-model")
    assert caught.value.field == "cost_total"
    assert usage_rows(raw) == []


def test_identical_replay_changes_nothing(ledger, alice, raw, clock):
    hold(ledger, "alice", "r1", usd(3))
    log(ledger, "alice", "r1", usd("2.5"))
    before = (figures(ledger, "alice"), usage_rows(raw), reservation_rows(raw))
    clock.advance(5000)
    replay = log(ledger, "alice", "r1", usd("2.5"), response_time_ms=999)
    assert replay.created is False
    assert replay.budget.used == usd("2.5")
    assert (figures(ledger, "alice"), usage_rows(raw), reservation_rows(raw)) == before


@pytest.mark.parametrize(
    "change",
    [{"cost": usd("2.6")}, {"model": "gpt-4o-mini"}, {"tokens": (11, 20)}, {"user_id": "bob"}],
)
def test_different_replay_conflicts_and_changes_nothing(ledger, alice, raw, change):
    provision(ledger, "bob")
    hold(ledger, "alice", "r1", usd(3))
    log(ledger, "alice", "r1", usd("2.5"))
    before = (
        figures(ledger, "alice"),
        figures(ledger, "bob"),
        usage_rows(raw),
        reservation_rows(raw),
        raw.execute("SELECT used, held FROM tenants").fetchall(),
    )
    arguments = {"user_id": "alice", "request_id": "r1", "cost": usd("2.5")} | change
    with pytest.raises(IdempotencyConflict):
        log(ledger, **arguments)
    after = (
        figures(ledger, "alice"),
        figures(ledger, "bob"),
        usage_rows(raw),
        reservation_rows(raw),
        raw.execute("SELECT used, held FROM tenants").fetchall(),
    )
    assert after == before


def test_usage_for_another_users_hold_conflicts(ledger, alice, raw):
    provision(ledger, "bob")
    hold(ledger, "alice", "r1", usd(3))
    with pytest.raises(IdempotencyConflict):
        log(ledger, "bob", "r1", usd(1))
    assert usage_rows(raw) == []
    assert figures(ledger, "alice")[2] == usd(3)


def test_usage_past_the_budget_is_recorded_and_the_user_is_exceeded(ledger, alice, raw):
    hold(ledger, "alice", "r1", usd(1))
    outcome = log(ledger, "alice", "r1", usd(25))
    assert outcome.created and outcome.budget.used == usd(25)
    assert outcome.budget.remaining == -usd(15)
    assert usage_rows(raw)[0][5] == usd(25)
    check = ledger.check_budget("alice", None, 0, 0, 0, None)
    assert check.status is BudgetStatus.EXCEEDED and not check.allowed
    assert hold(ledger, "alice", "r2", usd("0.01")).status is BudgetStatus.EXCEEDED


def test_hold_after_usage_is_closed(ledger, alice):
    hold(ledger, "alice", "r1", usd(3))
    log(ledger, "alice", "r1", usd(2))
    with pytest.raises(ReservationClosed, match="settled"):
        hold(ledger, "alice", "r1", usd(3))
    # usage logged with no hold at all: a late hold for it is closed too
    log(ledger, "alice", "r2", usd(1))
    with pytest.raises(ReservationClosed):
        hold(ledger, "alice", "r2", usd(1))
    assert figures(ledger, "alice")[1:3] == (usd(3), 0)


# -- release --------------------------------------------------------------------------------


def test_release_is_idempotent(ledger, alice, raw):
    hold(ledger, "alice", "r1", usd(3))
    first = ledger.release_reservation("r1")
    assert first.state is ReservationState.OPEN and first.amount == usd(3)
    assert figures(ledger, "alice") == (usd(10), 0, 0, usd(10))
    second = ledger.release_reservation("r1")
    assert second.state is ReservationState.RELEASED
    assert figures(ledger, "alice") == (usd(10), 0, 0, usd(10))
    assert reservation_rows(raw) == [("r1", "alice", usd(3), "released")]
    assert raw.execute("SELECT held FROM tenants").fetchone() == (0,)
    with pytest.raises(ReservationClosed, match="released"):
        hold(ledger, "alice", "r1", usd(3))


def test_release_of_a_settled_hold_is_refused(ledger, alice, raw):
    hold(ledger, "alice", "r1", usd(3))
    log(ledger, "alice", "r1", usd(2))
    with pytest.raises(ReservationClosed):
        ledger.release_reservation("r1")
    assert reservation_rows(raw) == [("r1", "alice", usd(3), "settled")]
    assert figures(ledger, "alice")[1:3] == (usd(2), 0)


def test_release_of_an_unknown_hold_is_not_found(ledger, alice):
    with pytest.raises(NotFound):
        ledger.release_reservation("nope")


def test_usage_after_release_is_still_recorded(ledger, alice, raw):
    hold(ledger, "alice", "r1", usd(3))
    ledger.release_reservation("r1")
    assert log(ledger, "alice", "r1", usd(2)).created
    assert figures(ledger, "alice")[1:3] == (usd(2), 0)


# -- expiry ---------------------------------------------------------------------------------


def test_expired_hold_stops_counting_and_cannot_be_retried(ledger, alice, clock):
    hold(ledger, "alice", "r1", usd(4))
    clock.advance(TTL_MS - 1)
    assert figures(ledger, "alice")[2] == usd(4)
    clock.advance(1)
    assert figures(ledger, "alice") == (usd(10), 0, 0, usd(10))
    with pytest.raises(ReservationClosed, match="expired"):
        hold(ledger, "alice", "r1", usd(4))
    assert hold(ledger, "alice", "r2", usd(10)).allowed


def test_expired_hold_is_swept_out_of_the_counters(ledger, alice, clock, raw):
    hold(ledger, "alice", "r1", usd(4))
    clock.advance(TTL_MS + 1)
    hold(ledger, "alice", "r2", usd(1))  # a write after expiry runs the sweep first
    assert reservation_rows(raw) == [
        ("r1", "alice", usd(4), "expired"),
        ("r2", "alice", usd(1), "open"),
    ]
    assert raw.execute("SELECT held FROM users").fetchone() == (usd(1),)
    assert raw.execute("SELECT held FROM tenants").fetchone() == (usd(1),)
    assert ledger.release_reservation("r1").state is ReservationState.EXPIRED
    assert figures(ledger, "alice")[2] == usd(1)


def test_usage_for_an_expired_hold_is_recorded(ledger, alice, clock):
    hold(ledger, "alice", "r1", usd(4))
    clock.advance(TTL_MS + 1)
    assert log(ledger, "alice", "r1", usd(3)).created
    assert figures(ledger, "alice")[1:3] == (usd(3), 0)


# -- tenants --------------------------------------------------------------------------------


def test_tenant_cap_applies_to_its_users_together(ledger, basic):
    assert ledger.put_tenant(Tenant("t1", "Team One", usd(5))) is True
    provision(ledger, "alice", tenant_id="t1")
    provision(ledger, "bob", tenant_id="t1")
    provision(ledger, "carol", tenant_id="t2")
    log(ledger, "alice", "a1", usd(3))
    log(ledger, "bob", "b1", usd(2))
    for user_id in ("alice", "bob"):
        result = ledger.check_budget(user_id, None, 0, 0, usd("0.01"), None)
        assert result.status is BudgetStatus.TENANT_EXCEEDED
        assert result.message == "Tenant budget exceeded"
        assert result.budget.tenant_used == usd(5) and result.budget.tenant_remaining == 0
    assert ledger.check_budget("carol", None, 0, 0, usd("0.01"), None).allowed
    assert ledger.put_tenant(Tenant("t1", "Team One", usd(6))) is False
    assert ledger.check_budget("alice", None, 0, 0, usd(1), None).allowed


def test_tenant_holds_count_against_other_users(ledger, basic):
    ledger.put_tenant(Tenant("t1", "Team One", usd(5)))
    provision(ledger, "alice")
    provision(ledger, "bob")
    assert hold(ledger, "alice", "a1", usd(4)).allowed
    assert hold(ledger, "bob", "b1", usd(2)).status is BudgetStatus.TENANT_EXCEEDED
    assert hold(ledger, "bob", "b2", usd(1)).allowed
    ledger.release_reservation("a1")
    assert hold(ledger, "bob", "b3", usd(4)).allowed


def test_tenant_without_cap_is_ignored(ledger, basic):
    provision(ledger, "alice")
    provision(ledger, "bob")
    log(ledger, "alice", "a1", usd(9))
    assert hold(ledger, "bob", "b1", usd(10)).allowed


# -- credits --------------------------------------------------------------------------------


def test_credit_raises_the_total_and_replays_change_nothing(ledger, alice, raw):
    created, view, grant_id = ledger.grant_credit("alice", usd(5), "goodwill", "g1")
    assert (created, grant_id) == (True, "g1")
    assert view.budget.total == usd(15) and view.budget.credits == usd(5)
    created, view, _ = ledger.grant_credit("alice", usd(5), "goodwill", "g1")
    assert created is False and view.budget.total == usd(15)
    with pytest.raises(IdempotencyConflict):
        ledger.grant_credit("alice", usd(6), "goodwill", "g1")
    with pytest.raises(IdempotencyConflict):
        ledger.grant_credit("alice", usd(5), "other reason", "g1")
    assert figures(ledger, "alice")[0] == usd(15)
    assert raw.execute("SELECT grant_id, amount FROM credit_grants").fetchall() == [("g1", usd(5))]


def test_credit_grant_id_is_global_not_per_user(ledger, alice):
    provision(ledger, "bob")
    ledger.grant_credit("alice", usd(5), "goodwill", "g1")
    with pytest.raises(IdempotencyConflict):
        ledger.grant_credit("bob", usd(5), "goodwill", "g1")
    assert figures(ledger, "bob")[0] == usd(10)


def test_credit_without_grant_id_is_always_new(ledger, alice):
    first = ledger.grant_credit("alice", usd(1), "a", None)[2]
    second = ledger.grant_credit("alice", usd(1), "a", None)[2]
    assert first != second and first.startswith("grant_")
    assert figures(ledger, "alice")[0] == usd(12)


def test_credit_lets_an_exceeded_user_back_in(ledger, alice):
    log(ledger, "alice", "r1", usd(10))
    assert hold(ledger, "alice", "r2", usd(1)).status is BudgetStatus.EXCEEDED
    ledger.grant_credit("alice", usd(1), "top-up", "g1")
    assert hold(ledger, "alice", "r2", usd(1)).allowed


# -- resets ---------------------------------------------------------------------------------


def test_reset_closes_the_period_into_history(ledger, alice, raw, clock):
    ledger.grant_credit("alice", usd(2), "promo", "g1")
    log(ledger, "alice", "r1", usd(3))
    clock.advance_to(APRIL)
    hold(ledger, "alice", "r2", usd(1))
    opened_at = alice.period_start_ms
    reset_at = clock.advance(60_000)

    result = ledger.reset_budgets("2026-04")
    assert (result.label, result.users_reset, result.already_done) == ("2026-04", 1, False)

    view = ledger.user("alice")
    assert view.period_label == "2026-04" and view.period_start_ms == reset_at
    assert (view.budget.used, view.budget.credits, view.budget.total) == (0, 0, usd(10))
    assert view.budget.held == usd(1)  # holds survive a reset
    assert view.budget.tenant_used == 0
    assert raw.execute(
        "SELECT user_id, label, period_start, period_end, tenant_id, product_id, plan_budget,"
        " credits, used FROM period_history"
    ).fetchall() == [
        ("alice", "2026-03", opened_at, reset_at, "t1", "basic", usd(10), usd(2), usd(3))
    ]

    # the surviving hold settles into the new period
    log(ledger, "alice", "r2", usd("0.5"))
    assert figures(ledger, "alice")[1:3] == (usd("0.5"), 0)


def test_labelled_reset_is_applied_once(ledger, alice, raw, clock):
    log(ledger, "alice", "r1", usd(3))
    clock.advance_to(APRIL)
    assert ledger.reset_budgets("2026-04").already_done is False
    log(ledger, "alice", "r2", usd(1))
    clock.advance(1000)
    again = ledger.reset_budgets("2026-04")
    assert (again.users_reset, again.already_done) == (0, True)
    assert figures(ledger, "alice")[1] == usd(1)
    assert raw.execute("SELECT COUNT(*) FROM period_history").fetchone() == (1,)
    assert raw.execute("SELECT label, users_reset FROM applied_resets").fetchall() == [
        ("2026-04", 1)
    ]


def test_unlabelled_reset_always_applies(ledger, alice, raw, clock):
    log(ledger, "alice", "r1", usd(3))
    first = ledger.reset_budgets(None)
    assert (first.label, first.users_reset, first.already_done) == ("2026-03", 1, False)
    log(ledger, "alice", "r2", usd(1))
    clock.advance(1000)
    second = ledger.reset_budgets(None)
    assert (second.users_reset, second.already_done) == (1, False)
    assert figures(ledger, "alice")[1] == 0
    assert raw.execute("SELECT used FROM period_history ORDER BY id").fetchall() == [
        (usd(3),),
        (usd(1),),
    ]
    assert raw.execute("SELECT COUNT(*) FROM applied_resets").fetchone() == (0,)


def test_resets_in_one_millisecond_still_separate_periods(ledger, alice, raw):
    ledger.reset_budgets(None)
    log(ledger, "alice", "r1", usd(2))
    ledger.reset_budgets(None)
    open_start = raw.execute("SELECT period_start FROM users WHERE id = 'alice'").fetchone()[0]
    in_open_period = raw.execute(
        "SELECT COALESCE(SUM(cost), 0) FROM usage WHERE user_id = 'alice' AND period_start = ?",
        (open_start,),
    ).fetchone()[0]
    assert figures(ledger, "alice")[1] == in_open_period == 0
    starts = raw.execute(
        "SELECT period_start, period_end FROM period_history ORDER BY id"
    ).fetchall()
    assert all(start < end for start, end in starts)


@pytest.mark.parametrize("label", ["2026-13", "２０２６-04", "2026-04\n"])
def test_reset_with_a_non_canonical_label_is_refused(ledger, alice, raw, clock, label):
    clock.advance_to(APRIL)
    ledger.reset_budgets("2026-04")
    log(ledger, "alice", "r1", usd(3))
    with pytest.raises((Invalid, ValueError)):
        ledger.reset_budgets(label)
    assert figures(ledger, "alice")[1] == usd(3)
    assert raw.execute("SELECT COUNT(*) FROM period_history").fetchone() == (1,)


# -- usage summary --------------------------------------------------------------------------


def test_usage_summary_by_model(ledger, alice, clock):
    log(ledger, "alice", "r1", None, model="gpt-4o", tokens=(10, 20))
    clock.advance(1000)
    log(ledger, "alice", "r2", None, model="gpt-4o", tokens=(100, 0))
    log(ledger, "alice", "r3", usd("0.5"), model="custom", tokens=(1, 2))
    summary = ledger.usage_summary("alice", None, None, "model")
    assert summary.from_ms == alice.period_start_ms and summary.to_ms == clock() + 1
    assert [
        (g.key, g.requests, g.tokens_input, g.tokens_output, g.cost) for g in summary.groups
    ] == [
        ("custom", 1, 1, 2, usd("0.5")),
        ("gpt-4o", 2, 110, 20, 225_000 + 250_000),
    ]


@pytest.mark.parametrize(
    ("zone", "moments", "days"),
    [
        # New York is UTC-4 in mid-March 2026: 03:00Z is still the 14th locally
        (
            "America/New_York",
            [
                datetime(2026, 3, 16, 3, 0, tzinfo=UTC),
                datetime(2026, 3, 16, 3, 59, tzinfo=UTC),
                datetime(2026, 3, 16, 4, 0, tzinfo=UTC),
                datetime(2026, 3, 16, 5, 10, tzinfo=UTC),
            ],
            [("2026-03-15", 2), ("2026-03-16", 2)],
        ),
        # Kolkata is UTC+5:30: local midnight falls on a half hour in UTC
        (
            "Asia/Kolkata",
            [
                datetime(2026, 3, 16, 18, 29, tzinfo=UTC),
                datetime(2026, 3, 16, 18, 31, tzinfo=UTC),
                datetime(2026, 3, 16, 18, 44, tzinfo=UTC),
            ],
            [("2026-03-16", 1), ("2026-03-17", 2)],
        ),
    ],
)
def test_usage_summary_by_day_in_the_budget_zone(make_ledger, alice, clock, zone, moments, days):
    zoned = make_ledger(zone)
    for number, moment in enumerate(moments):
        clock.advance(ms(moment) - clock())
        log(zoned, "alice", f"r{number}", usd(1), tokens=(number, 1))
    summary = zoned.usage_summary("alice", None, None, "day")
    assert [(g.key, g.requests) for g in summary.groups] == days
    assert sum(g.cost for g in summary.groups) == usd(len(moments))
    assert sum(g.tokens_input for g in summary.groups) == sum(range(len(moments)))
    assert sum(g.tokens_output for g in summary.groups) == len(moments)


def test_usage_summary_range_is_half_open_and_bounded(ledger, alice, clock):
    first = clock()
    log(ledger, "alice", "r1", usd(1))
    clock.advance(10)
    log(ledger, "alice", "r2", usd(2))
    only_first = ledger.usage_summary("alice", first, first + 10, "model")
    assert [(g.requests, g.cost) for g in only_first.groups] == [(1, usd(1))]
    with pytest.raises(Invalid) as caught:
        ledger.usage_summary("alice", first, first - 1, "model")
    assert caught.value.field == "to"
    with pytest.raises(Invalid):
        ledger.usage_summary("alice", first, first + 367 * 24 * 3600 * 1000, "model")
    with pytest.raises(NotFound):
        ledger.usage_summary("nobody", None, None, "model")


def test_usage_summary_defaults_to_the_open_period(ledger, alice, clock):
    log(ledger, "alice", "r1", usd(1))
    clock.advance_to(APRIL)
    ledger.reset_budgets("2026-04")
    clock.advance(1000)
    log(ledger, "alice", "r2", usd(2))
    summary = ledger.usage_summary("alice", None, None, "model")
    assert [(g.requests, g.cost) for g in summary.groups] == [(1, usd(2))]
