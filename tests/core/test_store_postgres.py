"""The PostgreSQL store's own behaviour: migrations once (racing opens too), URLs and pool
limits, the guards SQLite has no statement for (TRUNCATE, deleting an open hold), and the alert
thresholds its log-usage function mirrors from core."""

import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from zoneinfo import ZoneInfo

import psycopg
import pytest
from core_helpers import TTL_SECONDS, provision, usd
from pg_testing import PgRaw, ScratchDatabase, unavailable

from core.accounts import Product
from core.alerts import ALERT_THRESHOLDS_PERCENT, thresholds_crossed
from core.errors import ConfigurationError, Unavailable
from core.ledger import Ledger
from core.money import Money
from core.prices import load_price_table
from core.service import ONE_JOB_POOL_SIZE, open_ledger
from core.settings import Settings
from core.store import open_store
from core.store.postgres import AUTOVACUUM_OFF_WARNING, PostgresStore

POOL_TIMEOUT_SECONDS = 0.5


@pytest.fixture(scope="module")
def backend(postgres) -> str:
    """Only PostgreSQL here."""
    return "postgres"


@pytest.fixture
def new_url(postgres) -> str:
    return postgres.new_schema()


def open_pg(url: str, clock, pool_size: int = 2) -> PostgresStore:
    return PostgresStore(url, clock, pool_size=pool_size, pool_timeout_seconds=10.0)


@pytest.mark.parametrize(
    ("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)]
)
def test_without_a_server_postgresql_tests_fail_in_ci_and_skip_elsewhere(monkeypatch, ci, outcome):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome):
        unavailable("connection refused")


# -- migrations and opening -----------------------------------------------------------------


MIGRATIONS = [
    "0001_ledger.sql",
    "0002_flows.sql",
    "0003_guarded_reset.sql",
    "0004_money_bounds.sql",
    "0005_batched_reset.sql",
    "0006_reset_lanes.sql",
]


def test_opening_twice_applies_each_migration_once(new_url, clock):
    first = open_pg(new_url, clock)
    try:
        assert first.applied_migrations == MIGRATIONS
        first.put_product(Product("basic", "Basic", usd(10)), clock())
    finally:
        first.close()
    second = open_pg(new_url, clock)
    try:
        assert second.applied_migrations == []
        assert second.list_products() == [Product("basic", "Basic", usd(10))]
    finally:
        second.close()
    raw = PgRaw(new_url)
    try:
        rows = raw.execute("SELECT version, name FROM schema_migrations").fetchall()
    finally:
        raw.close()
    assert rows == [(version, name) for version, name in enumerate(MIGRATIONS, start=1)]


def test_a_database_migrated_by_a_newer_release_opens_and_names_what_it_does_not_know(
    new_url, clock
):
    first = open_pg(new_url, clock)
    try:
        assert first.newer_migrations == []
    finally:
        first.close()
    raw = PgRaw(new_url)
    try:
        raw.execute("INSERT INTO schema_migrations VALUES (99, '0099_from_the_future.sql', 0)")
    finally:
        raw.close()
    older = open_pg(new_url, clock)
    try:
        assert older.applied_migrations == []
        assert older.newer_migrations == ["0099_from_the_future.sql"]
        older.check_health()
    finally:
        older.close()


def test_stores_opening_at_once_migrate_once(new_url, clock):
    """Four processes' worth of stores race their first open: the advisory lock lets one
    migrate; the others wait and find the schema done."""
    start = threading.Barrier(4)

    def open_one(_: int) -> PostgresStore:
        start.wait()
        return open_pg(new_url, clock, pool_size=1)

    with ThreadPoolExecutor(max_workers=4) as pool:
        stores = list(pool.map(open_one, range(4)))
    try:
        applied = sorted(store.applied_migrations for store in stores)
        assert applied == [[], [], [], MIGRATIONS]
        for store in stores:
            store.check_health()
    finally:
        for store in stores:
            store.close()


def test_open_store_takes_both_url_schemes(new_url, clock):
    for url in (new_url, new_url.replace("postgresql://", "postgres://", 1)):
        store = open_store(url, clock, "FULL", database_pool_size=1)
        try:
            assert isinstance(store, PostgresStore)
            store.check_health()
        finally:
            store.close()


def test_a_server_running_without_autovacuum_is_warned_about(new_url, clock):
    """The local server's own setting decides which way this goes (CI's runs with it off)."""
    raw = PgRaw(new_url)
    try:
        autovacuum = raw.execute("SELECT current_setting('autovacuum')").fetchone()[0]
    finally:
        raw.close()
    store = open_pg(new_url, clock)
    try:
        expected = [AUTOVACUUM_OFF_WARNING] if autovacuum == "off" else []
        assert store.configuration_warnings == expected
    finally:
        store.close()


def test_a_read_only_server_is_refused_at_start_with_its_reason(new_url, clock):
    """A standby (here: every transaction read-only by the URL's options) cannot be migrated:
    a configuration error naming why, not a traceback."""
    read_only_url = new_url.replace("options=", "options=-cdefault_transaction_read_only%3Don%20")
    with pytest.raises(ConfigurationError, match="cannot migrate .*read-only transaction"):
        open_pg(read_only_url, clock)


def test_health_fails_while_the_server_takes_no_writes(clock):
    """A failover that leaves this process on a demoted primary: its connections are closed,
    the new ones are read-only. The health check says so, and recovers when writes return."""
    database = ScratchDatabase()
    try:
        store = open_pg(database.url, clock)
        try:
            store.check_health()
            database.set_read_only(True)
            with pytest.raises(Unavailable, match="takes no writes"):
                store.check_health()
            database.set_read_only(False)
            store.check_health()
        finally:
            store.close()
    finally:
        database.drop()


def test_health_fails_after_the_server_refused_a_write_until_one_succeeds(new_url, clock):
    """The server answers reads but refuses writes with disk_full (a trigger raises the error
    PostgreSQL raises when it cannot extend a file); once writes go through, health is back."""
    store = open_pg(new_url, clock)
    ledger = Ledger(store, load_price_table(), ZoneInfo("UTC"), TTL_SECONDS, clock_ms=clock)
    raw = PgRaw(new_url)
    try:
        ledger.put_product(Product("basic", "Basic", usd(10)))
        provision(ledger, "alice")
        raw.execute(
            "CREATE FUNCTION no_room() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " RAISE EXCEPTION USING ERRCODE = 'disk_full', MESSAGE = 'could not extend file';"
            " END $$"
        )
        raw.execute("CREATE TRIGGER no_room BEFORE INSERT ON usage EXECUTE FUNCTION no_room()")
        with pytest.raises(Unavailable):
            ledger.log_usage("alice", "m", "no-room", 1, 1, usd(1), None)
        with pytest.raises(Unavailable, match="the last write failed 0 s ago: could not extend"):
            store.check_health()
        raw.execute("DROP TRIGGER no_room ON usage")
        ledger.log_usage("alice", "m", "room-again", 1, 1, usd(1), None)
        store.check_health()
    finally:
        raw.close()
        store.close()


def test_an_unreachable_server_is_a_configuration_error_without_the_password(clock):
    with pytest.raises(ConfigurationError, match="DATABASE_URL") as refused:
        open_store("postgresql://billing:s3cret-pw@127.0.0.1:1/billing", clock, "FULL")
    assert "s3cret-pw" not in str(refused.value)
    assert "127.0.0.1:1/billing" in str(refused.value)


# -- limits -----------------------------------------------------------------------------------


def test_a_request_that_finds_no_free_connection_is_refused_and_changes_nothing(new_url, clock):
    """One connection in the pool, held by a hold waiting on a row another session locked: the
    next write waits POOL_TIMEOUT_SECONDS for a connection, then is refused as unavailable."""
    store = PostgresStore(new_url, clock, pool_size=1, pool_timeout_seconds=POOL_TIMEOUT_SECONDS)
    ledger = Ledger(store, load_price_table(), ZoneInfo("UTC"), TTL_SECONDS, clock_ms=clock)
    locker = psycopg.connect(new_url)
    try:
        ledger.put_product(Product("basic", "Basic", usd(10)))
        provision(ledger, "alice")
        locker.execute("SELECT 1 FROM users WHERE id = 'alice' FOR UPDATE")
        waiting = threading.Thread(
            target=ledger.check_budget, args=("alice", None, 0, 0, usd(1), "held-up")
        )
        waiting.start()
        for _ in range(100):  # until the hold waits on the lock (it holds the one connection)
            blocked = locker.execute(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()"
            ).fetchone()[0]
            if blocked:
                break
            time.sleep(0.05)  # polling for an order of events, not timing anything
        with pytest.raises(Unavailable, match="no database connection free"):
            ledger.log_usage("alice", "m", "refused", 1, 1, usd(1), None)
        locker.rollback()
        waiting.join(timeout=30)
        assert not waiting.is_alive()
        raw = PgRaw(new_url)
        try:
            assert raw.execute("SELECT request_id FROM usage").fetchall() == []
            assert raw.execute("SELECT request_id FROM reservations").fetchall() == [("held-up",)]
        finally:
            raw.close()
    finally:
        locker.close()
        store.close()


def test_connections_the_server_closed_are_replaced_without_failing_a_call(new_url, clock):
    """The server ends every pooled connection (a restart, a failover, a proxy cutting idle
    ones): the next calls get fresh connections instead of a 503 each."""
    name = f"billing-test-{secrets.token_hex(4)}"
    store = open_pg(f"{new_url}&application_name={name}", clock, pool_size=2)
    ledger = Ledger(store, load_price_table(), ZoneInfo("UTC"), TTL_SECONDS, clock_ms=clock)
    admin = psycopg.connect(new_url, autocommit=True)
    try:
        ledger.put_product(Product("basic", "Basic", usd(10)))
        provision(ledger, "alice")
        # In the aggregate's FILTER, so only this store's connections can be ended: in a WHERE
        # clause the server may call pg_terminate_backend before comparing the name.
        ended = admin.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = %s",
            (name,),
        ).fetchone()[0]
        assert ended == 2
        for _ in range(100):  # until the server has closed them (polling for an event, no timing)
            left = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)
            ).fetchone()[0]
            if not left:
                break
            time.sleep(0.05)
        for request_id in ("after-1", "after-2", "after-3"):
            assert ledger.user("alice").budget.used >= 0
            ledger.log_usage("alice", "m", request_id, 1, 1, usd(1), None)
        assert ledger.user("alice").budget.used == usd(3)
    finally:
        admin.close()
        store.close()


# -- guards SQLite has no statement for -------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "TRUNCATE usage",
        "TRUNCATE period_history",
        "TRUNCATE ledger_repairs",
        "TRUNCATE reservations",
        "DELETE FROM reservations WHERE request_id = 'r3'",
    ],
)
def test_history_cannot_be_truncated_nor_open_holds_deleted(populated, raw, statement):
    before = (
        raw.execute("SELECT COUNT(*) FROM usage").fetchone(),
        raw.execute("SELECT COUNT(*) FROM period_history").fetchone(),
        raw.execute("SELECT COUNT(*) FROM reservations").fetchone(),
    )
    assert before[0][0] and before[1][0] and before[2][0]
    with pytest.raises(psycopg.IntegrityError, match="append-only|never deleted"):
        raw.execute(statement)
    after = (
        raw.execute("SELECT COUNT(*) FROM usage").fetchone(),
        raw.execute("SELECT COUNT(*) FROM period_history").fetchone(),
        raw.execute("SELECT COUNT(*) FROM reservations").fetchone(),
    )
    assert after == before


def test_a_closed_hold_can_be_deleted(populated, raw):
    """Retention deletes closed holds (``delete_closed_reservations``); only open ones stay."""
    populated.release_reservation("r3")
    raw.execute("DELETE FROM reservations WHERE request_id = 'r3'")
    assert raw.execute("SELECT COUNT(*) FROM reservations").fetchone() == (0,)


# -- the alert rule, mirrored in SQL ----------------------------------------------------------


def test_the_database_crosses_alert_thresholds_exactly_as_core_does(raw):
    """``ledger_thresholds_crossed`` against ``core.alerts.thresholds_crossed``, on the edges of
    each threshold, a zero limit, and figures where 100 × used overflows a BIGINT."""
    limits = [0, 1, 7, usd(10), usd("0.000000003"), usd(1_000_000_000), 2**62]
    cases = []
    for limit in limits:
        edges = sorted(
            {0, 1, limit} | {t * limit // 100 + d for t in (80, 100) for d in (-1, 0, 1)}
        )
        edges = [edge for edge in edges if edge >= 0]
        cases += [(before, after, limit) for before in edges for after in edges]
    for before, after, limit in cases:
        (crossed,) = raw.execute(
            "SELECT ledger_thresholds_crossed(?, ?, ?, ?::INTEGER[])",
            (before, after, limit, list(ALERT_THRESHOLDS_PERCENT)),
        ).fetchone()
        expected = thresholds_crossed(Money(before), Money(after), Money(limit))
        assert tuple(crossed) == expected, (before, after, limit)


def test_a_process_that_serves_no_requests_opens_two_connections_not_the_apis_pool(
    postgres, new_url, tmp_path
):
    """A flow run, the alert watcher or a CLI command (``one_job``) does one thing at a time."""

    def connections() -> int:
        with psycopg.connect(postgres.url, autocommit=True) as probe:
            row = probe.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid()"
            ).fetchone()
        assert row is not None
        return int(row[0])

    settings = Settings(database_url=new_url, database_pool_size=16, data_dir=tmp_path)
    before = connections()
    for one_job, expected in ((True, ONE_JOB_POOL_SIZE), (False, 16)):
        store, _ = open_ledger(settings, one_job=one_job)
        try:
            assert connections() - before == expected
        finally:
            store.close()
