"""Both stores: the bounds of core.money hold in the write transaction and in the schema.

A usage, a credit or a hold that would take a counter past ``COUNTER_MAX`` is refused (a
usage or credit with ``AmountOutOfRange``, a hold with a denial) and writes nothing; the same
figures one nano-dollar lower are taken. On PostgreSQL the store asserts on every call that the
database's functions decided as ``core.budget`` did, so these edges also prove the SQL's
constants are the ones in ``core.money``. Counters are put near the bound by a direct write:
reaching it by usage would take a thousand calls a test.
"""

import sqlite3
from decimal import Decimal
from zoneinfo import ZoneInfo

import psycopg
import pytest
from core_helpers import TTL_SECONDS, provision, usd

from core.accounts import Product
from core.budget import BudgetStatus
from core.errors import AmountOutOfRange
from core.ledger import Ledger
from core.money import BUDGET_MAX, COST_PER_CALL_MAX, COUNTER_MAX, Money
from core.prices import ModelPrice, PriceTable

# What either database raises when a CHECK or a trigger refuses a statement.
REFUSED = (sqlite3.IntegrityError, psycopg.IntegrityError)


def snapshot_tables(raw) -> dict:
    """Every table a refused write must leave as it was."""
    return {
        table: raw.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
        for table in ("users", "tenants", "usage", "reservations", "credit_grants", "alerts")
    }


@pytest.fixture
def roomy(ledger: Ledger):
    """Alice and bob in tenant t1 (uncapped) on a plan of ``BUDGET_MAX``."""
    assert ledger.put_product(Product("roomy", "Roomy", BUDGET_MAX)) is True
    provision(ledger, "alice", product_id="roomy")
    provision(ledger, "bob", product_id="roomy")
    return ledger


def set_figure(raw, table: str, column: str, key: str, nanos: int) -> None:
    raw.execute(f"UPDATE {table} SET {column} = ? WHERE id = ?", (nanos, key))


def log(ledger: Ledger, user_id: str, request_id: str, nanos: int):
    return ledger.log_usage(user_id, "gpt-4o", request_id, 1, 1, Money(nanos), 10)


def test_a_usage_fills_the_users_used_to_the_bound_and_not_a_nano_more(roomy, raw):
    set_figure(raw, "users", "used", "alice", COUNTER_MAX - 5)
    assert log(roomy, "alice", "r-fill", 5).created
    assert roomy.user("alice").budget.used == COUNTER_MAX
    before = snapshot_tables(raw)
    with pytest.raises(AmountOutOfRange) as refused:
        log(roomy, "alice", "r-past", 1)
    assert refused.value.details == {"field": "cost_total", "bound": Decimal(1_000_000_000)}
    assert "user's used" in refused.value.message and "COUNTER_MAX" in refused.value.message
    assert snapshot_tables(raw) == before
    assert not log(roomy, "alice", "r-fill", 5).created  # a replay is no new write


def test_a_usage_of_another_user_may_not_take_the_tenants_used_past_the_bound(roomy, raw):
    set_figure(raw, "tenants", "used", "t1", COUNTER_MAX - 5)
    before = snapshot_tables(raw)
    with pytest.raises(AmountOutOfRange) as refused:
        log(roomy, "bob", "r-bob", 6)
    assert "tenant's used" in refused.value.message
    assert snapshot_tables(raw) == before
    assert log(roomy, "bob", "r-bob", 5).created
    assert raw.execute("SELECT used FROM tenants WHERE id = 't1'").fetchone() == (COUNTER_MAX,)


def test_a_usage_past_cost_per_call_max_is_refused_whoever_records_it(roomy, raw):
    """The gateway's log, and a backfill from LiteLLM's spend logs, which skips the API."""
    before = snapshot_tables(raw)
    with pytest.raises(AmountOutOfRange, match="COST_PER_CALL_MAX"):
        log(roomy, "alice", "r-dear", COST_PER_CALL_MAX + 1)
    spend = {"litellm_call_id": "spend-dear", "end_user": "alice", "spend": "1000000.000000001"}
    report = roomy.backfill_usage([spend])
    assert report.created == []
    assert report.refused == [("spend-dear", report.refused[0][1])]
    assert "COST_PER_CALL_MAX" in report.refused[0][1]
    assert snapshot_tables(raw) == before
    assert log(roomy, "alice", "r-dear", COST_PER_CALL_MAX).created


def test_a_priced_call_past_cost_per_call_max_is_refused(store, clock, roomy, raw):
    """A price table laid over the bundled one may price a call at anything."""
    dear = PriceTable({"dear": ModelPrice(Decimal(1), Decimal(1))})
    ledger = Ledger(store, dear, ZoneInfo("UTC"), TTL_SECONDS, clock_ms=clock)
    before = snapshot_tables(raw)
    with pytest.raises(AmountOutOfRange) as estimate:
        ledger.check_budget("alice", "dear", 1_000_000, 1, None, "r-priced")
    assert estimate.value.details["field"] == "cost_estimate"
    with pytest.raises(AmountOutOfRange) as usage:
        ledger.log_usage("alice", "dear", "r-priced", 1_000_000, 1, None, 10)
    assert usage.value.details["field"] == "cost_total"
    assert snapshot_tables(raw) == before
    assert ledger.log_usage("alice", "dear", "r-priced", 999_999, 1, None, 10).created


def test_a_credit_fills_credits_to_the_bound_and_not_a_nano_more(roomy, raw):
    set_figure(raw, "users", "credits", "alice", COUNTER_MAX - 5)
    before = snapshot_tables(raw)
    with pytest.raises(AmountOutOfRange) as refused:
        roomy.grant_credit("alice", Money(6), "too much", "g-past")
    assert refused.value.details == {"field": "amount", "bound": Decimal(1_000_000_000)}
    assert snapshot_tables(raw) == before
    created, user, _ = roomy.grant_credit("alice", Money(5), "to the brim", "g-fill")
    assert created and user.budget.credits == COUNTER_MAX


def test_a_hold_is_denied_when_the_users_counters_have_no_room(roomy, raw):
    """Plan and credits leave room; the counters do not: a call it could not bill is refused."""
    set_figure(raw, "users", "credits", "alice", BUDGET_MAX)
    set_figure(raw, "users", "used", "alice", COUNTER_MAX - 10)
    denied = roomy.check_budget("alice", None, 0, 0, Money(11), "h-over")
    assert denied.status is BudgetStatus.EXCEEDED and denied.reservation is None
    placed = roomy.check_budget("alice", None, 0, 0, Money(10), "h-fits")
    assert placed.allowed and placed.reservation is not None
    assert roomy.check_budget("alice", None, 0, 0, Money(0), None).status is BudgetStatus.EXCEEDED


def test_a_hold_is_denied_when_an_uncapped_tenants_counters_have_no_room(roomy, raw):
    set_figure(raw, "tenants", "used", "t1", COUNTER_MAX - 10)
    denied = roomy.check_budget("bob", None, 0, 0, Money(11), "h-bob-over")
    assert denied.status is BudgetStatus.TENANT_EXCEEDED and denied.reservation is None
    assert roomy.check_budget("bob", None, 0, 0, Money(10), "h-bob-fits").allowed
    assert roomy.check_budget("alice", None, 0, 0, Money(1), None).status is (
        BudgetStatus.TENANT_EXCEEDED
    )


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE users SET used = 1000000000000000001 WHERE id = 'alice'",
        "UPDATE users SET credits = 1000000000000000001 WHERE id = 'alice'",
        "UPDATE tenants SET used = 1000000000000000001 WHERE id = 't1'",
        "UPDATE users SET used = used + 9223372036854775000",
    ],
)
def test_the_schema_refuses_a_counter_grown_past_counter_max(roomy, raw, statement):
    """Whatever writes: the store refuses first, the schema holds the bound regardless."""
    before = snapshot_tables(raw)
    with pytest.raises(REFUSED, match="COUNTER_MAX"):
        raw.execute(statement)
    assert snapshot_tables(raw) == before


def test_the_schema_lets_a_counter_reach_counter_max_and_shrink(roomy, raw):
    raw.execute("UPDATE users SET used = 1000000000000000000, credits = 1000000000000000000")
    raw.execute("UPDATE tenants SET used = 1000000000000000000")
    raw.execute("UPDATE users SET used = 0 WHERE id = 'alice'")
    raw.execute("UPDATE tenants SET used = 0")
    rows = raw.execute("SELECT id, used, credits FROM users ORDER BY id").fetchall()
    assert [tuple(row) for row in rows] == [
        ("alice", 0, COUNTER_MAX),
        ("bob", COUNTER_MAX, COUNTER_MAX),
    ]


def test_a_usage_may_still_settle_and_count_at_the_bound(roomy, raw):
    """A hold placed at the edge is settled by its usage, which fills the counter exactly."""
    set_figure(raw, "users", "used", "alice", COUNTER_MAX - usd(2))
    hold = roomy.check_budget("alice", None, 0, 0, usd(2), "h-edge")
    assert hold.allowed
    assert log(roomy, "alice", "h-edge", usd(2)).created
    view = roomy.user("alice").budget
    assert (view.used, view.held) == (COUNTER_MAX, 0)


def test_the_usage_view_adds_up_more_than_a_bigint_holds(roomy, raw, store, clock):
    """Ten periods of usage at COUNTER_MAX in one range: past 2^63 nano-dollars, yet exact."""
    for period in range(10):
        raw.execute(
            "INSERT INTO usage VALUES (?, 'alice', 't1', 'm', 1, 1, ?, NULL, ?, ?)",
            (f"big-{period}", COUNTER_MAX, period, clock() + period),
        )
        raw.execute("UPDATE users SET used = 0 WHERE id = 'alice'")
        raw.execute("UPDATE tenants SET used = 0 WHERE id = 't1'")
    by_model = store.usage_groups("alice", clock(), clock() + 10, "model")
    assert [(group.key, group.requests, group.cost) for group in by_model] == [
        ("m", 10, 10 * COUNTER_MAX)
    ]
    by_bucket = store.usage_groups("alice", clock(), clock() + 10, "bucket")
    assert sum(group.cost for group in by_bucket) == 10 * COUNTER_MAX > 2**63


def test_a_reset_summary_adds_up_counters_whose_total_passes_64_bits(ledger, basic, raw, clock):
    """Ten users at COUNTER_MAX: their closed periods total past 2**63 nano-dollars. The
    counters are set directly; the summary reads only what the reset closed."""
    for index in range(10):
        provision(ledger, f"u{index}", tenant_id=f"t{index}")
    raw.execute("UPDATE users SET used = ?", (COUNTER_MAX,))
    raw.execute("UPDATE tenants SET used = ?", (COUNTER_MAX,))
    clock.advance(1)
    label = ledger.reset_budgets(None).label
    summary = ledger.closed_period_summary(label, 3)
    assert summary.spend_total == 10 * COUNTER_MAX > 2**63
    assert [spender.used for spender in summary.top_spenders] == [COUNTER_MAX] * 3
