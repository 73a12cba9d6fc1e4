"""Helpers shared by the core tests (imported by conftest and test modules)."""

import threading
from datetime import UTC, datetime
from pathlib import Path

from pg_testing import POOL_SIZE, POOL_TIMEOUT_SECONDS

from core.accounts import UserView
from core.ledger import Ledger
from core.money import Money, money_from_input
from core.store.base import LedgerStore
from core.store.postgres import PostgresStore
from core.store.sqlite import SqliteStore

START = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
# The month after START's: a labelled reset to "2026-04" is refused before it begins.
APRIL = datetime(2026, 4, 1, 0, 0, tzinfo=UTC)
MAY = datetime(2026, 5, 1, 0, 0, tzinfo=UTC)
TTL_SECONDS = 600
PASSWORD = "correct horse battery"


def ms(moment: datetime) -> int:
    """A timezone-aware datetime as integer ms since the epoch."""
    assert moment.tzinfo is not None
    return int(moment.timestamp()) * 1000 + moment.microsecond // 1000


def usd(amount: str | int) -> Money:
    """Dollars (written as a decimal string or int) as Money."""
    return money_from_input(str(amount))


class FakeClock:
    """A callable returning int ms that only moves when a test moves it."""

    def __init__(self, start_ms: int) -> None:
        self._now = start_ms
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            return self._now

    def advance(self, delta_ms: int) -> int:
        assert delta_ms >= 0
        with self._lock:
            self._now += delta_ms
            return self._now

    def advance_to(self, moment: datetime) -> int:
        """Move to ``moment`` (not before now)."""
        return self.advance(ms(moment) - self())


def provision(
    ledger: Ledger,
    user_id: str,
    tenant_id: str = "t1",
    product_id: str = "basic",
    email: str | None = None,
) -> UserView:
    return ledger.provision_user(
        email if email is not None else f"{user_id}@example.com",
        PASSWORD,
        product_id,
        tenant_id,
        user_id,
    )


def open_test_store(database_url: str, clock: FakeClock) -> LedgerStore:
    if database_url.startswith("sqlite:"):
        return SqliteStore(Path(database_url.removeprefix("sqlite:///")), clock, "FULL")
    return PostgresStore(
        database_url, clock, pool_size=POOL_SIZE, pool_timeout_seconds=POOL_TIMEOUT_SECONDS
    )
