"""Storage backends behind ``LedgerStore``, chosen by the ``DATABASE_URL`` scheme."""

from collections.abc import Callable

from core.errors import ConfigurationError
from core.settings import DATABASE_POOL_SIZE_DEFAULT, DATABASE_POOL_TIMEOUT_SECONDS_DEFAULT
from core.store.base import LedgerStore
from core.store.sqlite import SqliteStore, sqlite_path_from_url


def open_store(
    database_url: str,
    clock_ms: Callable[[], int],
    sqlite_synchronous: str,
    *,
    database_pool_size: int = DATABASE_POOL_SIZE_DEFAULT,
    database_pool_timeout_seconds: float = DATABASE_POOL_TIMEOUT_SECONDS_DEFAULT,
) -> LedgerStore:
    """Open (and migrate) the store named by ``database_url``: SQLite or PostgreSQL."""
    if database_url.startswith("sqlite:"):
        return SqliteStore(sqlite_path_from_url(database_url), clock_ms, sqlite_synchronous)
    if database_url.startswith(("postgresql://", "postgres://")):
        try:
            from core.store.postgres import PostgresStore
        except ImportError:
            raise ConfigurationError(
                "DATABASE_URL names PostgreSQL: install the extra,"
                " pip install 'cloudfreedom-billing[postgres]'"
            ) from None
        return PostgresStore(
            database_url,
            clock_ms,
            pool_size=database_pool_size,
            pool_timeout_seconds=database_pool_timeout_seconds,
        )
    raise ConfigurationError(
        "DATABASE_URL must be a sqlite:/// or a postgresql:// (postgres://) URL"
    )
