"""The ``billing`` command: ``serve`` runs the API under waitress, ``migrate`` the schema,
``healthcheck`` asks the local API whether it is healthy (the container's health check),
``backup`` copies the SQLite database while the service runs, ``pocketbase init`` gives the
identity store its fields and its mail settings, ``dev`` runs the whole stack locally."""

import argparse
import logging
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from adapters.pocketbase import open_identity_store, pocketbase_mail
from core.errors import ConfigurationError, IdentityUnavailable
from core.service import open_ledger
from core.settings import Keys, Settings, resolve_keys
from core.store.sqlite import sqlite_path_from_url
from core.store.sqlite_backup import BackupFailed, backup_sqlite
from flows.cli import FLOW_COMMANDS
from flows.cli import add_commands as add_flow_commands
from flows.cli import run_command as run_flow_command
from service.dev import dev
from service.healthcheck import healthy
from service.logs import configure_logging
from service.supervisor import supervise

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


def serve(settings: Settings) -> int:
    """Keys and migrations once, here; then the supervised workers (``service.supervisor``)."""
    keys = resolve_keys(settings)
    _announce_keys(keys)
    identities = open_identity_store(settings)  # a bad PocketBase setting stops start-up here
    if identities is not None:
        identities.close()
    store, _ = open_ledger(settings, one_job=True)
    try:
        for name in store.applied_migrations:
            log.info("applied migration %s", name)
        if store.newer_migrations:
            log.warning("%s", _newer_schema_message(store.newer_migrations))
        for warning in store.configuration_warnings:
            log.warning("%s", warning)
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
    store, _ = open_ledger(settings, one_job=True)
    try:
        applied = store.applied_migrations
        print("applied: " + ", ".join(applied) if applied else "schema is up to date")
        if store.newer_migrations:
            print(_newer_schema_message(store.newer_migrations))
        for warning in store.configuration_warnings:
            print(f"billing: warning: {warning}", file=sys.stderr)
    finally:
        store.close()


def _newer_schema_message(names: list[str]) -> str:
    """Why an older release runs on: ``core.store.base.newer_migrations`` says."""
    return (
        "the database has migrations this release does not know ("
        + ", ".join(names)
        + "): a newer release applied them; running on it as it is"
    )


def backup(settings: Settings, target: Path) -> None:
    """A consistent copy of the SQLite database, made while the service runs."""
    if not settings.database_url.startswith("sqlite:"):
        raise ConfigurationError(
            "backup copies a SQLite database; back PostgreSQL up with pg_dump or the server's"
            " own backups"
        )
    try:
        made = backup_sqlite(sqlite_path_from_url(settings.database_url), target)
    except BackupFailed as error:
        print(f"billing: backup failed, nothing written to {target}: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"backed up to {made.path} ({made.size_bytes:,} bytes, quick_check ok)")


def healthcheck(settings: Settings) -> None:
    """Exit 0 when the API on this host's PORT answers ``GET /`` with status ok, else 1 (the
    image's health check is ``billing-healthcheck``, the same check without loading the CLI)."""
    problem = healthy(settings.port)
    if problem is not None:
        print(f"billing: {problem}", file=sys.stderr)
        raise SystemExit(1)


def pocketbase_init(settings: Settings) -> None:
    """Give the auth collection the fields provisioning writes, and PocketBase the SMTP server
    of ``SMTP_*`` (so its password-reset mails go out) and ``APP_URL``; a second run changes
    nothing."""
    identities = open_identity_store(settings)
    if identities is None:
        raise ConfigurationError("POCKETBASE_URL is not set")
    mail = pocketbase_mail(settings)
    try:
        added = identities.ensure_fields()
        if mail is not None:
            identities.configure_mail(mail)
    except IdentityUnavailable as error:
        print(f"billing: {error.message}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        identities.close()
    collection = settings.pocketbase_collection
    if added:
        print(f"{collection}: added fields " + ", ".join(added))
    else:
        print(f"{collection}: fields are up to date")
    if mail is None:
        print("mail: SMTP_HOST is not set; PocketBase cannot mail password resets")
    else:
        print(f"mail: PocketBase sends through {mail.host}:{mail.port} (SMTP_HOST, SMTP_PORT)")


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
    commands.add_parser("healthcheck", help="exit 0 when the local API (PORT) is healthy")
    backup_command = commands.add_parser(
        "backup", help="copy the SQLite database, consistently, while the service runs"
    )
    backup_command.add_argument("target", type=Path, help="the new file (never overwritten)")
    pocketbase = commands.add_parser("pocketbase", help="the PocketBase identity store")
    pocketbase_commands = pocketbase.add_subparsers(dest="pocketbase_command", required=True)
    pocketbase_commands.add_parser(
        "init", help="add the fields provisioning writes to POCKETBASE_COLLECTION (idempotent)"
    )
    dev_command = commands.add_parser(
        "dev", help="run the local stack: API, Prefect, worker, PocketBase, mail sink"
    )
    dev_command.add_argument(
        "--env-file",
        type=Path,
        default=Path(".env"),
        help="read by every process of the stack (written with local values if missing)",
    )
    add_flow_commands(commands)
    arguments = parser.parse_args(argv)
    if arguments.command == "dev":
        try:
            raise SystemExit(dev(Path.cwd(), arguments.env_file))
        except ConfigurationError as error:
            print(f"billing: {error}", file=sys.stderr)
            raise SystemExit(2) from None
    configure_logging()
    if getattr(arguments, "workers", None) is not None:
        # Through the environment, so it is validated like WORKERS and workers read the same.
        os.environ["WORKERS"] = str(arguments.workers)
    settings = load_settings()
    try:
        if arguments.command == "serve":
            raise SystemExit(serve(settings))
        elif arguments.command == "healthcheck":
            healthcheck(settings)
        elif arguments.command == "backup":
            backup(settings, arguments.target)
        elif arguments.command == "pocketbase":
            pocketbase_init(settings)
        elif arguments.command in FLOW_COMMANDS:
            run_flow_command(arguments, settings)
        else:
            migrate(settings)
    except ConfigurationError as error:
        print(f"billing: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
