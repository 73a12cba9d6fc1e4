"""Start-up shared by the API, the CLI and the flows: one way to build the store and the ledger."""

from core.errors import ConfigurationError
from core.ledger import Ledger, wall_clock_ms
from core.prices import load_price_table
from core.settings import Settings
from core.store import open_store
from core.store.base import LedgerStore

# A PostgreSQL pool opens all its connections at start. A flow run, the alert watcher or a CLI
# command does one thing at a time (plus the store's housekeeper): with the API's 16 each, a
# compose stack on one PostgreSQL (an API of two workers, the Prefect worker's flow runs, the
# watcher, Prefect's own server) went past max_connections 100 and a reset failed to connect.
ONE_JOB_POOL_SIZE = 2


def open_ledger(settings: Settings, one_job: bool = False) -> tuple[LedgerStore, Ledger]:
    """Open (and migrate) the configured store and the ledger over it; the caller closes it.
    ``one_job``: for a process that is not serving requests, at most ``ONE_JOB_POOL_SIZE``
    database connections."""
    try:
        prices = load_price_table(settings.model_prices_path)
    except (OSError, ValueError) as error:
        raise ConfigurationError(f"MODEL_PRICES_PATH: {error}") from None
    store = open_store(
        settings.database_url,
        wall_clock_ms,
        settings.sqlite_synchronous,
        database_pool_size=(
            min(settings.database_pool_size, ONE_JOB_POOL_SIZE)
            if one_job
            else settings.database_pool_size
        ),
        database_pool_timeout_seconds=settings.database_pool_timeout_seconds,
    )
    return store, Ledger(store, prices, settings.zone, settings.reservation_ttl_seconds)
