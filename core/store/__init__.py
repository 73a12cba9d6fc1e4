"""Storage backends behind ``LedgerStore``, chosen by the ``DATABASE_URL`` scheme."""

from collections.abc import Callable

from core.errors import ConfigurationError
from core.store.base import LedgerStore
from core.store.sqlite import SqliteStore, sqlite_path_from_url


def open_store(
    database_url: str, clock_ms: Callable[[], int], sqlite_synchronous: str
) -> LedgerStore:
    """Open (and migrate) the store named by ``database_url``."""
    if database_url.startswith("sqlite:"):
        return SqliteStore(sqlite_path_from_url(database_url), clock_ms, sqlite_synchronous)
    raise ConfigurationError("DATABASE_URL must be a sqlite:/// URL (PostgreSQL is not built yet)")
