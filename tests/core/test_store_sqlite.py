"""The SQLite store: migrations once, URLs, WAL, and the write path's limits (the guards and
counters both stores share are in test_store_guards.py)."""

import fcntl
import os
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from core_helpers import TTL_SECONDS, usd

from core.accounts import Product
from core.errors import ConfigurationError, Unavailable
from core.ledger import Ledger
from core.prices import load_price_table
from core.store import open_store
from core.store.sqlite import PROCESS_LOCK_SUFFIX, SqliteStore, sqlite_path_from_url

MIGRATIONS = [
    "0001_ledger.sql",
    "0002_flows.sql",
    "0003_guarded_reset.sql",
    "0004_money_bounds.sql",
    "0005_batched_reset.sql",
    "0006_reset_lanes.sql",
]
CHECKPOINT_WAIT_SECONDS_MAX = 10


@pytest.fixture(scope="module")
def backend() -> str:
    """Only SQLite here."""
    return "sqlite"


# -- migrations and opening -----------------------------------------------------------------


def test_opening_twice_applies_each_migration_once(tmp_path, clock):
    path = tmp_path / "l.db"
    first = SqliteStore(path, clock, "FULL")
    try:
        assert first.applied_migrations == MIGRATIONS
        first.put_product(Product("basic", "Basic", usd(10)), clock())
    finally:
        first.close()
    second = SqliteStore(path, clock, "FULL")
    try:
        assert second.applied_migrations == []
        assert second.list_products() == [Product("basic", "Basic", usd(10))]
    finally:
        second.close()
    with closing(sqlite3.connect(path)) as connection:
        rows = connection.execute("SELECT version, name FROM schema_migrations").fetchall()
    assert rows == [(version, name) for version, name in enumerate(MIGRATIONS, start=1)]


def test_a_database_migrated_by_a_newer_release_opens_and_names_what_it_does_not_know(
    tmp_path, clock
):
    path = tmp_path / "l.db"
    first = SqliteStore(path, clock, "FULL")
    try:
        assert first.newer_migrations == []
        first.put_product(Product("basic", "Basic", usd(10)), clock())
    finally:
        first.close()
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.execute(
            "INSERT INTO schema_migrations VALUES (99, '0099_from_the_future.sql', 0)"
        )
    older = SqliteStore(path, clock, "FULL")
    try:
        assert older.applied_migrations == []
        assert older.newer_migrations == ["0099_from_the_future.sql"]
        assert older.list_products() == [Product("basic", "Basic", usd(10))]
    finally:
        older.close()


def test_a_file_that_is_not_a_database_is_refused_and_nothing_stays_open(tmp_path, clock):
    notes = tmp_path / "notes.db"
    notes.write_text("not a database\n" * 100)
    descriptors_before = sorted(os.listdir("/proc/self/fd"))
    with pytest.raises(ConfigurationError, match="cannot open .*notes.db: file is not a database"):
        SqliteStore(notes, clock, "FULL")
    assert sorted(os.listdir("/proc/self/fd")) == descriptors_before


def test_two_stores_open_at_once_migrate_once(tmp_path, clock):
    path = tmp_path / "l.db"
    first = SqliteStore(path, clock, "NORMAL")
    second = SqliteStore(path, clock, "NORMAL")
    try:
        assert first.applied_migrations == MIGRATIONS
        assert second.applied_migrations == []
        first.check_health()
        second.check_health()
    finally:
        second.close()
        first.close()


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///data/billing.db", Path("data/billing.db")),
        ("sqlite:////srv/b.db", Path("/srv/b.db")),
    ],
)
def test_sqlite_path_from_url(url, path):
    assert sqlite_path_from_url(url) == path


@pytest.mark.parametrize("url", ["sqlite:///", "sqlite://x.db", "postgresql://h/db", "data/b.db"])
def test_bad_sqlite_urls_are_refused(url):
    with pytest.raises(ValueError):
        sqlite_path_from_url(url)


def test_open_store_by_url(tmp_path, clock):
    store = open_store(f"sqlite:///{tmp_path}/nested/b.db", clock, "NORMAL")
    try:
        assert store.applied_migrations == MIGRATIONS
        assert (tmp_path / "nested" / "b.db").exists()
    finally:
        store.close()
    with pytest.raises(ConfigurationError, match="DATABASE_URL"):
        open_store("mysql://localhost/billing", clock, "FULL")


def test_store_runs_in_wal_mode(store, raw):
    assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    store.check_health()


def test_a_commit_reaches_the_database_file_through_the_housekeepers_checkpoint(
    store, clock, db_path
):
    """In WAL mode a commit lands in the WAL; the housekeeper copies it into the database file
    soon after, even alone (``CHECKPOINT_DELAY_MS_MAX``), not at SQLite's 1,000-page automatic
    checkpoint."""
    store.put_product(Product("checkpointed-plan", "Checkpointed", usd(1)), clock())
    deadline = time.monotonic() + CHECKPOINT_WAIT_SECONDS_MAX
    while b"checkpointed-plan" not in db_path.read_bytes():
        assert time.monotonic() < deadline, "the commit never left the WAL"
        time.sleep(0.01)


# -- the write path's limits ----------------------------------------------------------------


def test_writes_that_cannot_get_the_lock_are_refused_and_change_nothing(tmp_path, clock):
    """Another process holds the write lock: the leader gives up after the busy timeout, a
    follower is withdrawn at its deadline, a write past the queue limit is refused at once, and
    none of them leaves a trace once the lock is free again."""
    store = SqliteStore(
        tmp_path / "l.db",
        clock,
        "FULL",
        busy_timeout_ms=1_500,
        write_wait_seconds_max=0.3,
        write_queue_max=1,
    )
    ledger = Ledger(store, load_price_table(), ZoneInfo("UTC"), TTL_SECONDS, clock_ms=clock)
    try:
        ledger.put_product(Product("basic", "Basic", usd(10)))
        other_process = sqlite3.connect(tmp_path / "l.db", isolation_level=None)
        other_process.execute("BEGIN IMMEDIATE")
        outcomes: dict[str, BaseException | None] = {}

        def put(name: str) -> None:
            try:
                ledger.put_product(Product(name, name, usd(1)))
                outcomes[name] = None
            except Unavailable as error:
                outcomes[name] = error

        leader = threading.Thread(target=put, args=("leader",))
        leader.start()
        time.sleep(0.2)  # ordering only: the leader is waiting for the lock
        follower = threading.Thread(target=put, args=("follower",))
        follower.start()
        time.sleep(0.1)  # ordering only: the follower is queued
        put("overflow")
        follower.join(timeout=30)
        leader.join(timeout=30)
        other_process.execute("ROLLBACK")
        other_process.close()
        assert set(outcomes) == {"leader", "follower", "overflow"}
        assert all(isinstance(error, Unavailable) for error in outcomes.values()), outcomes
        assert "busy" in str(outcomes["leader"])
        assert "retry shortly" in str(outcomes["follower"])  # withdrawn, not run after the leader
        assert "queue is full" in str(outcomes["overflow"])
        assert [product.id for product in ledger.list_products()] == ["basic"]
        ledger.put_product(Product("after", "After", usd(1)))
        assert [product.id for product in ledger.list_products()] == ["after", "basic"]
    finally:
        store.close()


def test_a_write_waits_for_another_process_writer_and_is_refused_past_the_busy_timeout(
    tmp_path, clock
):
    """Writers of several processes queue on a lock file beside the database, not in SQLite's
    busy handler (retries after sleeps of up to 100 ms): a write runs as soon as the other
    process's batch is done, and is refused, unwritten, when that takes past the busy timeout."""
    path = tmp_path / "l.db"
    store = SqliteStore(path, clock, "FULL", busy_timeout_ms=1_000)
    ledger = Ledger(store, load_price_table(), ZoneInfo("UTC"), TTL_SECONDS, clock_ms=clock)
    other_process = os.open(f"{path}{PROCESS_LOCK_SUFFIX}", os.O_RDONLY)
    try:
        ledger.put_product(Product("basic", "Basic", usd(10)))
        fcntl.flock(other_process, fcntl.LOCK_EX)
        with pytest.raises(Unavailable, match="busy"):
            ledger.put_product(Product("refused", "Refused", usd(1)))
        done = threading.Timer(0.05, fcntl.flock, args=(other_process, fcntl.LOCK_UN))
        done.start()
        ledger.put_product(Product("waited", "Waited", usd(1)))
        done.join()
        assert [product.id for product in ledger.list_products()] == ["basic", "waited"]
    finally:
        os.close(other_process)
        store.close()
