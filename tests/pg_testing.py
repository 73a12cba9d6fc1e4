"""PostgreSQL for the tests: one scratch database per session on the local server, a schema
per use inside it, emptied (not re-created) when a test asks for it fresh.

The server is ``TEST_POSTGRES_URL`` (default: the loopback server, trust auth, role postgres).
Unreachable: the PostgreSQL variants skip locally, and fail when ``CI`` is set.
"""

import os
import secrets
import time
from typing import Any
from urllib.parse import quote, urlsplit

import psycopg
import pytest
from psycopg import sql

ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
CONNECT_TIMEOUT_SECONDS = 5
POOL_SIZE = 4
POOL_TIMEOUT_SECONDS = 10.0
TERMINATE_WAITS_MAX = 500
TERMINATE_WAIT_SECONDS = 0.01


def unavailable(reason: str) -> None:
    """Skip the PostgreSQL variant here; in CI (``CI`` set) a missing server is a failure."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"PostgreSQL is required in CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL not reachable: {reason}")


def schema_url(database_url: str, schema: str) -> str:
    """``database_url`` with every connection's search_path set to ``schema`` (libpq options)."""
    separator = "&" if "?" in database_url else "?"
    return f"{database_url}{separator}options={quote(f'-csearch_path={schema}', safe='')}"


class ScratchDatabase:
    """A database created for this session, dropped (with its connections) at its end."""

    def __init__(self, admin_url: str = ADMIN_URL) -> None:
        self.admin_url = admin_url
        self.name = f"billing_test_{os.getpid()}_{secrets.token_hex(4)}"
        with psycopg.connect(
            admin_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
        ) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        self.url = urlsplit(admin_url)._replace(path=f"/{self.name}").geturl()
        self._known_schemas: set[str] = set()
        self._connection = psycopg.connect(self.url, autocommit=True)

    def fresh_schema(self, schema: str) -> str:
        """A URL on ``schema``, created empty the first time, its tables emptied afterwards.

        The store migrates a new schema when it opens it. Emptying runs with triggers (and so
        foreign keys) off, by session_replication_role, since usage and period history refuse
        DELETE.
        """
        assert schema.isidentifier(), schema
        if schema not in self._known_schemas:
            self._connection.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {0} CASCADE; CREATE SCHEMA {0}").format(
                    sql.Identifier(schema)
                )
            )
            self._known_schemas.add(schema)
        else:
            tables = [
                row[0]
                for row in self._connection.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = %s"
                    " AND tablename <> 'schema_migrations'",
                    (schema,),
                )
            ]
            # DELETE, not TRUNCATE: on a few rows it is several times faster.
            with self._connection.transaction():
                self._connection.execute("SET LOCAL session_replication_role = replica")
                for name in tables:
                    self._connection.execute(
                        sql.SQL("DELETE FROM {}").format(sql.Identifier(schema, name))
                    )
        return schema_url(self.url, schema)

    def new_schema(self) -> str:
        """A URL on a schema never used before (nothing migrated yet)."""
        schema = f"s_{secrets.token_hex(6)}"
        self._connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        return schema_url(self.url, schema)

    def set_read_only(self, read_only: bool) -> None:
        """Every transaction of a new connection read-only (or not), as on a standby, and every
        other connection to the database closed, as by a failover."""
        setting = "on" if read_only else "off"
        self._connection.execute(
            sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = {}").format(
                sql.Identifier(self.name), sql.SQL(setting)
            )
        )
        others = "FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
        self._connection.execute(f"SELECT pg_terminate_backend(pid) {others}", (self.name,))
        # pg_terminate_backend only signals: wait until the backends have said goodbye.
        for _ in range(TERMINATE_WAITS_MAX):
            if (
                self._connection.execute(f"SELECT count(*) {others}", (self.name,)).fetchone()[0]
                == 0
            ):
                return
            time.sleep(TERMINATE_WAIT_SECONDS)
        raise AssertionError(f"connections to {self.name} still open after termination")

    def drop(self) -> None:
        self._connection.close()
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name))
            )


class PgRaw:
    """A direct connection (autocommit) that reads like the tests' sqlite3 one: ``?`` marks a
    parameter and ``execute`` returns a cursor with ``fetchone``/``fetchall``."""

    def __init__(self, url: str) -> None:
        self.connection = psycopg.connect(url, autocommit=True)

    def execute(self, statement: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> Any:
        assert "%" not in statement, statement
        return self.connection.execute(statement.replace("?", "%s"), params or None)

    def close(self) -> None:
        self.connection.close()
