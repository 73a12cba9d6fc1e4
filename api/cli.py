"""The ``billing`` command: ``serve`` runs the API under waitress, ``migrate`` the schema."""

import argparse
import logging
import os
import sys

from pydantic import ValidationError

from api.logs import configure_logging
from api.supervisor import supervise
from core.errors import ConfigurationError
from core.ledger import Ledger, wall_clock_ms
from core.prices import load_price_table
from core.settings import Keys, Settings, resolve_keys
from core.store import open_store
from core.store.base import LedgerStore

log = logging.getLogger("billing")


def load_settings() -> Settings:
    """Settings from the environment, or exit with a message naming each bad variable."""
    try:
        return Settings()
    except ValidationError as error:
        for problem in error.errors(include_url=False, include_input=False):
            name = str(problem["loc"][0]).upper() if problem["loc"] else "configuration"
            print(f"billing: {name}: {problem['msg']}", file=sys.stderr)
        raise SystemExit(2) from None


def open_ledger(settings: Settings) -> tuple[LedgerStore, Ledger]:
    try:
        prices = load_price_table(settings.model_prices_path)
    except (OSError, ValueError) as error:
        raise ConfigurationError(f"MODEL_PRICES_PATH: {error}") from None
    store = open_store(settings.database_url, wall_clock_ms, settings.sqlite_synchronous)
    return store, Ledger(store, prices, settings.zone, settings.reservation_ttl_seconds)


def serve(settings: Settings) -> int:
    """Keys and migrations once, here; then the supervised workers (``api.supervisor``)."""
    keys = resolve_keys(settings)
    _announce_keys(keys)
    store, _ = open_ledger(settings)
    try:
        for name in store.applied_migrations:
            log.info("applied migration %s", name)
    finally:
        store.close()
    return supervise(settings)


def _announce_keys(keys: Keys) -> None:
    if keys.generated_path is not None:
        log.warning(
            "no BILLING_API_KEY/ADMIN_SECRET_KEY in the environment: using the keys kept in %s",
            keys.generated_path,
        )


def migrate(settings: Settings) -> None:
    store, _ = open_ledger(settings)
    try:
        applied = store.applied_migrations
        print("applied: " + ", ".join(applied) if applied else "schema is up to date")
    finally:
        store.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="billing", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_command = commands.add_parser(
        "serve", help="run the API under waitress (PORT, THREADS, WORKERS, …)"
    )
    serve_command.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="waitress processes sharing the port (overrides WORKERS; default: CPU count)",
    )
    commands.add_parser("migrate", help="apply pending schema migrations and exit")
    arguments = parser.parse_args(argv)
    configure_logging()
    if getattr(arguments, "workers", None) is not None:
        # Through the environment, so it is validated like WORKERS and workers read the same.
        os.environ["WORKERS"] = str(arguments.workers)
    settings = load_settings()
    try:
        if arguments.command == "serve":
            raise SystemExit(serve(settings))
        migrate(settings)
    except ConfigurationError as error:
        print(f"billing: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
