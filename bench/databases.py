"""The databases a run measures on: copies of the seed, made, checked after the run, dropped."""

import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench import BenchFailure
from core.ledger import wall_clock_ms
from core.store import open_store
from core.store.postgres import autovacuum_off

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SEED_TABLES = ("products", "tenants", "users", "usage")


@dataclass(frozen=True)
class Databases:
    """The databases of one size, each shared by every server of its kind."""

    urls: dict[str, str]  # database kind → DATABASE_URL
    analyze_postgres: bool  # PostgreSQL's autovacuum is off: ANALYZE before each run on it

    def before_run(self, database: str) -> None:
        """What a run on ``database`` needs first: fresh statistics when autovacuum is off."""
        if self.analyze_postgres and database == "postgres":
            _analyze(self.urls["postgres"])

    def check_ledgers(self) -> None:
        for database_url in self.urls.values():
            _check_ledger(database_url)


@contextmanager
def prepared_databases(
    seed_path: Path, size_dir: Path, kinds: list[str], admin_url: str, tag: str
) -> Iterator[Databases]:
    """A copy of the seed for each kind in ``kinds``; a scratch PostgreSQL one is dropped after."""
    urls: dict[str, str] = {}
    scratch_postgres: str | None = None
    try:
        if "sqlite" in kinds:
            urls["sqlite"] = _copy_sqlite_seed(seed_path, size_dir / "billing.db")
        if "postgres" in kinds:
            scratch_postgres, urls["postgres"] = _postgres_from_seed(seed_path, admin_url, tag)
        analyze_postgres = "postgres" in urls and _autovacuum_off(urls["postgres"])
        if analyze_postgres:
            print(
                "   PostgreSQL's autovacuum is off: ANALYZE before each PostgreSQL run, as"
                " autovacuum would have by then",
                flush=True,
            )
        yield Databases(urls, analyze_postgres)
    finally:
        if scratch_postgres is not None:
            _drop_postgres(admin_url, scratch_postgres)


def _copy_sqlite_seed(seed_path: Path, db_path: Path) -> str:
    """A copy of the cached seed for this run (runs write to it); returns its DATABASE_URL."""
    started = time.monotonic()
    shutil.copyfile(seed_path, db_path)
    # Flush the copy now, so the kernel is not writing a gigabyte back during the measurements.
    descriptor = os.open(db_path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    print(f"   copied the database in {time.monotonic() - started:.1f} s", flush=True)
    return f"sqlite:///{db_path.resolve()}"  # absolute: sqlite:////…


def _postgres_from_seed(seed_path: Path, admin_url: str, tag: str) -> tuple[str, str]:
    """A scratch PostgreSQL database with the service's schema and the seed's rows.

    Returns its name and its DATABASE_URL; ``_drop_postgres`` removes it.
    """
    started = time.monotonic()
    name = f"bench_{tag}".lower()
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    database_url = _url_with_database(admin_url, name)
    open_store(database_url, wall_clock_ms, "FULL").close()  # applies the migrations
    source = sqlite3.connect(f"file:{seed_path}?mode=ro", uri=True)
    try:
        with psycopg.connect(database_url) as target:
            for table in SEED_TABLES:
                cursor = source.execute(f"SELECT * FROM {table}")
                columns = [column[0] for column in cursor.description]
                with target.cursor().copy(
                    f"COPY {table} ({', '.join(columns)}) FROM STDIN"
                ) as copy:
                    for row in cursor:
                        copy.write_row(row)
            target.execute("ANALYZE")
    finally:
        source.close()
    print(f"   filled PostgreSQL database {name} in {time.monotonic() - started:.1f} s", flush=True)
    return name, database_url


def _autovacuum_off(database_url: str) -> bool:
    with psycopg.connect(database_url) as connection:
        return autovacuum_off(connection)


def _analyze(database_url: str) -> None:
    """Fresh planner statistics, and with them fresh plans in every server connection.

    Without autovacuum, plans made while ``reservations`` was empty scan the whole table for
    each check once the hold runs have filled it (check-budget at one connection: 1,300 →
    560 req/s after 6 s of holds; back to 1,300 after an ANALYZE).
    """
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("ANALYZE")


def _url_with_database(admin_url: str, name: str) -> str:
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


def _drop_postgres(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _check_ledger(database_url: str) -> None:
    """After the run the counters still match the rows: the load changed nothing it should not.

    A SQLite file is opened read-write, as a restarted server would (a read-only connection
    cannot recover a WAL its last writer left), and must pass ``PRAGMA quick_check``.
    """
    queries = (
        "SELECT COALESCE(SUM(cost), 0) FROM usage",
        "SELECT COALESCE(SUM(used), 0), COALESCE(SUM(held), 0) FROM users",
        "SELECT COALESCE(SUM(amount), 0) FROM reservations WHERE state = 'open'",
    )
    if database_url.startswith("sqlite:"):
        connection = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        try:
            problems = [row[0] for row in connection.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise BenchFailure(f"the database fails quick_check after the run: {problems[:5]}")
            rows = [connection.execute(query).fetchone() for query in queries]
        finally:
            connection.close()
    else:
        with psycopg.connect(database_url) as connection:
            rows = [connection.execute(query).fetchone() for query in queries]
    (usage_sum,), (used_sum, held_sum), (open_sum,) = rows
    if usage_sum != used_sum or held_sum != open_sum:
        raise BenchFailure(
            f"ledger counters do not match after the run: usage {usage_sum} vs used {used_sum},"
            f" open holds {open_sum} vs held {held_sum}"
        )
