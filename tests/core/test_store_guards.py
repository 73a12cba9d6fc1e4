"""Both stores: CHECKs and triggers guard the facts, counters equal the facts, and concurrent
writers in one process neither overspend nor double-charge."""

import random
import sqlite3
import threading
from collections import Counter

import psycopg
import pytest
from core_helpers import open_test_store, provision, usd

from core.accounts import Product, Tenant
from core.budget import BudgetStatus, UserStatus
from core.errors import LedgerError, Unavailable

# What either database raises when a CHECK or a trigger refuses a statement.
REFUSED = (sqlite3.IntegrityError, psycopg.IntegrityError)

# -- the database guards the facts ----------------------------------------------------------


def snapshot_tables(raw):
    return {
        table: raw.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
        for table in (
            "users",
            "tenants",
            "usage",
            "reservations",
            "period_history",
            "credit_grants",
        )
    }


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE users SET used = -1",
        "UPDATE users SET held = held - 1000000000000",
        "UPDATE users SET credits = -1",
        "UPDATE users SET status = 'deleted'",
        "UPDATE tenants SET used = -1",
        "UPDATE tenants SET held = -1",
        "UPDATE tenants SET monthly_budget = -1",
        "UPDATE products SET monthly_budget = -1",
        "UPDATE reservations SET amount = -1",
        "UPDATE reservations SET state = 'gone'",
        "INSERT INTO credit_grants VALUES ('g0', 'alice', 0, 'zero', 0, 0)",
    ],
)
def test_checks_make_a_negative_counter_impossible(populated, raw, statement):
    before = snapshot_tables(raw)
    with pytest.raises(REFUSED):
        raw.execute(statement)
    assert snapshot_tables(raw) == before


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE usage SET cost = 0",
        "UPDATE usage SET model = 'other' WHERE request_id = 'r1'",
        "DELETE FROM usage",
        "DELETE FROM usage WHERE request_id = 'r2'",
        "UPDATE period_history SET used = 0",
        "DELETE FROM period_history",
    ],
)
def test_usage_and_period_history_are_append_only(populated, raw, statement):
    before = snapshot_tables(raw)
    assert before["usage"] and before["period_history"]
    with pytest.raises(REFUSED, match="append-only"):
        raw.execute(statement)
    assert snapshot_tables(raw) == before


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE reservations SET state = 'open' WHERE request_id = 'r4'",
        "UPDATE reservations SET state = 'released' WHERE request_id = 'r4'",
        "UPDATE reservations SET amount = amount + 1 WHERE request_id = 'r3'",
        "UPDATE reservations SET user_id = 'bob' WHERE request_id = 'r3'",
    ],
)
def test_a_reservation_only_moves_forward(populated, raw, statement):
    populated.check_budget("alice", None, 0, 0, usd(1), "r4")
    populated.log_usage("alice", "gpt-4o", "r4", 10, 20, usd(1), 50)
    before = snapshot_tables(raw)
    with pytest.raises(REFUSED, match="only moves"):
        raw.execute(statement)
    assert snapshot_tables(raw) == before


def test_triggers_keep_counters_whoever_writes(populated, raw):
    """A fact written outside the ledger still moves its counters: the rule is in the schema."""
    raw.execute("UPDATE reservations SET state = 'released' WHERE request_id = 'r3'")
    raw.execute(
        "INSERT INTO usage VALUES ('raw-1', 'alice', 't1', 'm', 1, 1, 5, NULL,"
        " (SELECT period_start FROM users WHERE id = 'alice'), 0)"
    )
    assert_counters_match_facts(raw)


# -- counters equal the facts ---------------------------------------------------------------


def assert_counters_match_facts(raw):
    users = raw.execute(
        "SELECT u.id, u.used, u.held,"
        " (SELECT COALESCE(SUM(g.cost), 0) FROM usage g"
        "   WHERE g.user_id = u.id AND g.period_start = u.period_start),"
        " (SELECT COALESCE(SUM(r.amount), 0) FROM reservations r"
        "   WHERE r.user_id = u.id AND r.state = 'open')"
        " FROM users u ORDER BY u.id"
    ).fetchall()
    for user_id, used, held, used_facts, held_facts in users:
        assert (used, held) == (used_facts, held_facts), user_id
    tenants = raw.execute(
        "SELECT t.id, t.used, t.held,"
        " (SELECT COALESCE(SUM(g.cost), 0) FROM usage g JOIN users u ON u.id = g.user_id"
        "   WHERE g.tenant_id = t.id AND g.period_start = u.period_start),"
        " (SELECT COALESCE(SUM(r.amount), 0) FROM reservations r"
        "   WHERE r.tenant_id = t.id AND r.state = 'open')"
        " FROM tenants t ORDER BY t.id"
    ).fetchall()
    for tenant_id, used, held, used_facts, held_facts in tenants:
        assert (used, held) == (used_facts, held_facts), tenant_id
    return users, tenants


@pytest.mark.parametrize("seed", [1, 2026])
def test_counters_equal_the_facts_after_a_random_mix(ledger, basic, clock, raw, seed):
    rng = random.Random(seed)
    ledger.put_product(Product("small", "Small", usd(3)))
    ledger.put_tenant(Tenant("capped", "Capped", usd(6)))
    users = ["u0", "u1", "u2", "u3"]
    for number, user_id in enumerate(users):
        provision(
            ledger,
            user_id,
            tenant_id="capped" if number < 2 else "free",
            product_id="small" if number % 2 else "basic",
        )
    amounts = [0, usd("0.1"), usd("0.5"), usd(1), usd("2.25"), usd(4)]
    owners: dict[str, str] = {}
    amount_of: dict[str, int] = {}
    outcomes: Counter[str] = Counter()
    next_id = 0

    def some_request_id() -> str:
        nonlocal next_id
        if owners and rng.random() < 0.4:
            return rng.choice(sorted(owners))
        next_id += 1
        return f"req-{next_id}"

    for step in range(300):
        clock.advance(rng.choice([1, 1, 5, 1000, 60_000, 200_000]))
        user_id = rng.choice(users)
        roll = rng.random()
        try:
            if roll < 0.35:
                request_id = some_request_id()
                user_id = owners.get(request_id, user_id) if rng.random() < 0.8 else user_id
                amount = amount_of.get(request_id, 0) if rng.random() < 0.7 else rng.choice(amounts)
                amount = amount or rng.choice(amounts)
                result = ledger.check_budget(user_id, None, 0, 0, amount, request_id)
                if result.reservation is not None:
                    owners.setdefault(request_id, user_id)
                    amount_of.setdefault(request_id, amount)
                outcomes[f"reserve:{result.status}"] += 1
            elif roll < 0.65:
                request_id = some_request_id()
                user_id = owners.get(request_id, user_id) if rng.random() < 0.9 else user_id
                cost = rng.choice(amounts)
                outcome = ledger.log_usage(user_id, "gpt-4o", request_id, 1, 2, cost, 10)
                outcomes[f"log:{outcome.created}"] += 1
            elif roll < 0.8:
                request_id = (
                    rng.choice(sorted(owners)) if owners and rng.random() < 0.9 else "unknown"
                )
                ledger.release_reservation(request_id)
                outcomes["release"] += 1
            elif roll < 0.9:
                grant_id = f"g{rng.randrange(8)}"
                ledger.grant_credit(user_id, rng.choice(amounts[1:]), "r", grant_id)
                outcomes["credit"] += 1
            elif roll < 0.95:
                status = UserStatus.SUSPENDED if rng.random() < 0.3 else UserStatus.ACTIVE
                ledger.update_user(user_id, status, None)
                outcomes["status"] += 1
            else:
                label = rng.choice([None, "2026-04", "2026-05"])
                force = label is not None and rng.random() < 0.5
                outcomes[f"reset:{ledger.reset_budgets(label, force).already_done}"] += 1
        except LedgerError as error:
            assert not isinstance(error, Unavailable), error  # a CHECK refused a counter update
            outcomes[error.code] += 1
        if step % 50 == 49:
            assert_counters_match_facts(raw)
    assert_counters_match_facts(raw)

    for user_id in users:
        budget = ledger.user(user_id).budget
        used, held = raw.execute("SELECT used, held FROM users WHERE id = ?", (user_id,)).fetchone()
        assert budget.used == used and budget.held <= held
    # the mix exercised the interesting paths
    states = dict(raw.execute("SELECT state, COUNT(*) FROM reservations GROUP BY state").fetchall())
    assert set(states) == {"open", "settled", "released", "expired"}, states
    for seen in (
        "reserve:active",
        "log:True",
        "release",
        "credit",
        "idempotency_conflict",
        "reservation_closed",
    ):
        assert outcomes[seen] > 0, (seen, outcomes)


# -- concurrency ----------------------------------------------------------------------------


def test_two_threads_cannot_overspend(ledger, clock, raw):
    amount = usd("0.1")
    ledger.put_product(Product("fifty", "Fifty", amount * 50))
    provision(ledger, "alice", product_id="fifty")
    start = threading.Barrier(2)
    allowed: list[int] = []
    errors: list[BaseException] = []

    def client(thread: int) -> None:
        start.wait()
        count = 0
        try:
            for call in range(100):
                result = ledger.check_budget("alice", None, 0, 0, amount, f"t{thread}-{call}")
                if result.allowed:
                    assert result.reservation is not None
                    count += 1
                else:
                    assert result.status is BudgetStatus.EXCEEDED and result.reservation is None
        except BaseException as error:  # noqa: BLE001 - handed to the main thread
            errors.append(error)
        allowed.append(count)

    threads = [threading.Thread(target=client, args=(number,)) for number in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(allowed) == 50
    assert raw.execute(
        "SELECT COUNT(*), SUM(amount) FROM reservations WHERE state = 'open'"
    ).fetchone() == (50, amount * 50)
    assert raw.execute("SELECT held FROM users").fetchone() == (amount * 50,)
    assert raw.execute("SELECT held FROM tenants").fetchone() == (amount * 50,)
    assert ledger.user("alice").budget.remaining == 0


def test_concurrent_replays_of_one_usage_record_it_once(ledger, alice, raw):
    start = threading.Barrier(4)
    created: list[bool] = []

    def client() -> None:
        start.wait()
        for _ in range(20):
            created.append(ledger.log_usage("alice", "gpt-4o", "r1", 10, 20, None, 5).created)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert created.count(True) == 1 and len(created) == 80
    assert raw.execute("SELECT COUNT(*), SUM(cost) FROM usage").fetchone() == (1, 225_000)
    assert ledger.user("alice").budget.used == 225_000


def test_writes_racing_resets_land_wholly_in_one_period(ledger, basic, clock, raw):
    """Threads hold, log and release while another thread resets periods: each write lands
    wholly before or after a reset, so counters equal the facts and every cent of usage is in
    an open period or in history."""
    ledger.put_tenant(Tenant("capped", "Capped", usd(40)))
    users = ["u0", "u1", "u2", "u3"]
    for number, user_id in enumerate(users):
        provision(ledger, user_id, tenant_id="capped" if number < 2 else "free")
    start = threading.Barrier(len(users) + 1)
    errors: list[BaseException] = []

    def writer(user_id: str) -> None:
        try:
            start.wait()
            for call in range(30):
                request_id = f"{user_id}-{call}"
                if not ledger.check_budget(user_id, None, 0, 0, usd("0.5"), request_id).allowed:
                    continue
                if call % 3 == 0:
                    ledger.release_reservation(request_id)
                else:
                    ledger.log_usage(user_id, "m", request_id, 1, 1, usd("0.4"), None)
        except BaseException as error:  # noqa: BLE001 - handed to the main thread
            errors.append(error)

    def resetter() -> None:
        try:
            start.wait()
            for _ in range(6):
                clock.advance(1000)
                ledger.reset_budgets(None)
        except BaseException as error:  # noqa: BLE001 - handed to the main thread
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(user_id,)) for user_id in users]
    threads.append(threading.Thread(target=resetter))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert_counters_match_facts(raw)
    (usage_total,) = raw.execute("SELECT COALESCE(SUM(cost), 0) FROM usage").fetchone()
    (history_total,) = raw.execute("SELECT COALESCE(SUM(used), 0) FROM period_history").fetchone()
    (open_total,) = raw.execute("SELECT COALESCE(SUM(used), 0) FROM users").fetchone()
    assert usage_total > 0
    assert history_total + open_total == usage_total
    assert raw.execute("SELECT COUNT(*) FROM reservations WHERE state = 'open'").fetchone() == (0,)


def test_store_data_survives_a_reopen(ledger, alice, store, database_url, clock):
    ledger.check_budget("alice", None, 0, 0, usd(2), "r1")
    ledger.log_usage("alice", "m", "r2", 1, 1, usd(3), None)
    before = ledger.user("alice")
    store.close()
    reopened = open_test_store(database_url, clock)
    try:
        assert reopened.read_user("alice", clock()) == before
    finally:
        reopened.close()
