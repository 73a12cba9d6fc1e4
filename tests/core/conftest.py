"""Shared fixtures for the core tests: a fake clock, a real store (SQLite file or PostgreSQL
schema, see ``backend``), a ledger, and a raw connection to the same database."""

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from core_helpers import APRIL, START, TTL_SECONDS, FakeClock, ms, open_test_store, provision, usd
from pg_testing import PgRaw

from core.accounts import Product, UserView
from core.ledger import Ledger
from core.prices import load_price_table
from core.store.base import LedgerStore


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(ms(START))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "l.db"


@pytest.fixture
def database_url(backend: str, db_path: Path, request: pytest.FixtureRequest) -> str:
    """The test's own empty database: a SQLite file, or an emptied PostgreSQL schema."""
    if backend == "sqlite":
        return f"sqlite:///{db_path}"
    return request.getfixturevalue("postgres").fresh_schema("core_store")


@pytest.fixture
def store(database_url: str, clock: FakeClock) -> Iterator[LedgerStore]:
    opened = open_test_store(database_url, clock)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def ledger(store: LedgerStore, clock: FakeClock) -> Ledger:
    return Ledger(store, load_price_table(), ZoneInfo("UTC"), TTL_SECONDS, clock_ms=clock)


@pytest.fixture
def make_ledger(store: LedgerStore, clock: FakeClock) -> Callable[[str], Ledger]:
    """A ledger over the same store in another budget time zone."""

    def build(zone_name: str) -> Ledger:
        return Ledger(store, load_price_table(), ZoneInfo(zone_name), TTL_SECONDS, clock_ms=clock)

    return build


@pytest.fixture
def raw(database_url: str, store: LedgerStore) -> Iterator[sqlite3.Connection | PgRaw]:
    """A separate connection to the store's database, to read (or tamper with) the tables
    directly; on PostgreSQL it takes ``?`` parameters too."""
    if database_url.startswith("sqlite:"):
        connection: sqlite3.Connection | PgRaw = sqlite3.connect(
            database_url.removeprefix("sqlite:///"), isolation_level=None, timeout=10
        )
    else:
        connection = PgRaw(database_url)
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
def basic(ledger: Ledger) -> Product:
    """A $10 plan."""
    product = Product("basic", "Basic", usd("10"))
    assert ledger.put_product(product) is True
    return product


@pytest.fixture
def alice(ledger: Ledger, basic: Product) -> UserView:
    """A user on the $10 plan in tenant t1."""
    return provision(ledger, "alice")


@pytest.fixture
def populated(ledger, alice, clock):
    """A user with usage, an open hold, a credit and one closed period in history."""
    ledger.log_usage("alice", "gpt-4o", "r1", 10, 20, usd(1), 50)
    clock.advance_to(APRIL)
    ledger.reset_budgets("2026-04")
    ledger.log_usage("alice", "gpt-4o", "r2", 10, 20, usd(2), 50)
    ledger.check_budget("alice", None, 0, 0, usd(1), "r3")
    ledger.grant_credit("alice", usd(1), "promo", "g1")
    return ledger
