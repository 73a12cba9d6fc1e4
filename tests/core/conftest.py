"""Shared fixtures for the core tests: a fake clock, a real SQLite store, a ledger, a raw reader."""

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from core_helpers import START, TTL_SECONDS, FakeClock, ms, provision, usd

from core.ledger import Ledger
from core.prices import load_price_table
from core.store.base import Product, UserView
from core.store.sqlite import SqliteStore


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(ms(START))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "l.db"


@pytest.fixture
def store(db_path: Path, clock: FakeClock) -> Iterator[SqliteStore]:
    opened = SqliteStore(db_path, clock, "FULL")
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def ledger(store: SqliteStore, clock: FakeClock) -> Ledger:
    return Ledger(store, load_price_table(), ZoneInfo("UTC"), TTL_SECONDS, clock_ms=clock)


@pytest.fixture
def make_ledger(store: SqliteStore, clock: FakeClock) -> Callable[[str], Ledger]:
    """A ledger over the same store in another budget time zone."""

    def build(zone_name: str) -> Ledger:
        return Ledger(store, load_price_table(), ZoneInfo(zone_name), TTL_SECONDS, clock_ms=clock)

    return build


@pytest.fixture
def raw(db_path: Path, store: SqliteStore) -> Iterator[sqlite3.Connection]:
    """A separate connection to the store's file, to read (or tamper with) the tables directly."""
    connection = sqlite3.connect(db_path, isolation_level=None, timeout=10)
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
