"""Start-up shared by the API, the CLI and the flows: one way to build the store and the ledger."""

from core.errors import ConfigurationError
from core.ledger import Ledger, wall_clock_ms
from core.prices import load_price_table
from core.settings import Settings
from core.store import open_store
from core.store.base import LedgerStore


def open_ledger(settings: Settings) -> tuple[LedgerStore, Ledger]:
    """Open (and migrate) the configured store and the ledger over it; the caller closes it."""
    try:
        prices = load_price_table(settings.model_prices_path)
    except (OSError, ValueError) as error:
        raise ConfigurationError(f"MODEL_PRICES_PATH: {error}") from None
    store = open_store(
        settings.database_url,
        wall_clock_ms,
        settings.sqlite_synchronous,
        database_pool_size=settings.database_pool_size,
        database_pool_timeout_seconds=settings.database_pool_timeout_seconds,
    )
    return store, Ledger(store, prices, settings.zone, settings.reservation_ttl_seconds)
