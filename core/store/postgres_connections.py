"""PostgreSQL connections for ``PostgresStore``: the bounded pool its calls run on, failures
turned into ``Unavailable`` and counted into one log line, and a health probe of its own.

Kept apart from the ledger's SQL so that what an outage, a failover or a busy pool does to a
request is read in one place (tested against a real server stopped and restarted under load:
``tests/hostile/test_faults.py``).
"""

import logging
import re
import select
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg.conninfo
import psycopg_pool

from core.errors import ConfigurationError, Unavailable
from core.failure_log import FailureLog
from core.store.base import WriteFailures

log = logging.getLogger("core.store.postgres")

POOL_WAITING_MAX = 4_096
CONNECT_TIMEOUT_SECONDS = 10
# How long the pool retries replacing a lost connection before it gives up. With
# psycopg_pool's default (5 minutes) its attempts back off from 1 s, doubling, so after an
# outage of N seconds the next came up to N seconds after the server was back: requests failed
# for ~3 s more after a restart. Given up, the pool connects again only for a request that
# starts waiting; ``PostgresConnections.housekeeping`` asks it to whenever requests wait with no
# connection idle: an attempt at least every housekeeping round while requests wait.
POOL_RECONNECT_TIMEOUT_SECONDS = 0.5
# GET / waits this long for its probe of the server, and /metrics this long for a pooled
# connection, instead of the pool's timeout (5 s by default: past the health check's 3 s).
HEALTH_PROBE_WAIT_SECONDS = 0.5
METRICS_POOL_WAIT_SECONDS = 0.5
# libpq's shortest connect timeout; the probe is waited for less (HEALTH_PROBE_WAIT_SECONDS).
PROBE_CONNECT_TIMEOUT_SECONDS = 2
STATEMENT_TIMEOUT_MS = 30_000


class PostgresConnections:
    """A pool of autocommit connections to one server, opened at once or refused with libpq's
    reason; ``connection()`` lends one and turns the database's failures into ``Unavailable``."""

    def __init__(
        self,
        database_url: str,
        clock_ms: Callable[[], int],
        *,
        pool_size: int,
        pool_timeout_seconds: float,
    ) -> None:
        assert database_url.startswith(("postgresql://", "postgres://"))
        assert pool_size > 0 and pool_timeout_seconds > 0
        self.described = describe(database_url)
        self._pool_size = pool_size
        self._write_failures = WriteFailures(clock_ms)
        self._failures = FailureLog(log, "postgres operation failed")
        self._probe = _HealthProbe(database_url)
        self._pool = psycopg_pool.ConnectionPool(
            database_url,
            min_size=pool_size,
            max_size=pool_size,
            timeout=pool_timeout_seconds,
            max_waiting=POOL_WAITING_MAX,
            reconnect_timeout=POOL_RECONNECT_TIMEOUT_SECONDS,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_SECONDS},
            configure=configure,
            name="billing",
            open=False,
        )
        try:
            # One direct attempt first, so a wrong URL fails at once with libpq's reason (the
            # pool would retry until its timeout). libpq's messages never carry the password.
            psycopg.connect(database_url, connect_timeout=CONNECT_TIMEOUT_SECONDS).close()
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECONDS)
        except (psycopg_pool.PoolTimeout, psycopg.Error) as error:
            self._pool.close()
            raise ConfigurationError(
                f"DATABASE_URL: cannot connect to PostgreSQL {self.described}"
                f" within {CONNECT_TIMEOUT_SECONDS} s: {first_line(error)}"
            ) from None

    def setup_connection(self) -> Any:
        """A pooled connection with no failure handling, for migrating at start-up (its
        ``psycopg.Error`` is the caller's to report as a configuration error)."""
        return self._pool.connection()

    @contextmanager
    def connection(
        self, write: bool = False, wait_seconds: float | None = None
    ) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection, waited for at most ``wait_seconds`` (None: the pool's timeout);
        failures of the database become ``Unavailable`` (a 503), logged as ``FailureLog``
        lines.

        With ``write``, the database's own failure (not a busy pool, not a constraint) is
        remembered for the health check until a write succeeds (``WriteFailures``).
        """
        try:
            connection = self._live_connection(wait_seconds)
            try:
                with connection:  # what the pool's own connection() does: end the transaction
                    yield connection
            finally:
                self._pool.putconn(connection)
        except psycopg_pool.TooManyRequests:
            self._failures.failed("too many requests wait for a connection")
            raise Unavailable("too many requests wait for the database; retry shortly") from None
        except psycopg_pool.PoolTimeout:
            self._failures.failed("no connection free in time")
            raise Unavailable("no database connection free in time; retry shortly") from None
        except psycopg.IntegrityError as error:
            log.error("integrity check refused a write: %s", error)
            raise Unavailable("write refused by a database constraint") from None
        except psycopg.Error as error:
            self._failures.failed(first_line(error))
            if write:
                self._write_failures.failed(first_line(error))
            raise Unavailable("database operation failed; retry shortly") from None
        if write:
            self._write_failures.succeeded()

    def _live_connection(self, wait_seconds: float | None) -> psycopg.Connection[Any]:
        """A pooled connection the server has not closed. After a restart or failover every
        idle one is closed: each found so is dropped (the pool opens its replacement) and the
        next taken, so no call fails on a connection that was dead before it began."""
        for _ in range(self._pool_size + 1):
            connection = self._pool.getconn(wait_seconds)
            if not _closed_by_server(connection):
                return connection
            connection.close()
            self._pool.putconn(connection)
        self._failures.failed("the server keeps closing connections")
        raise Unavailable("the database keeps closing connections; retry shortly")

    def one(
        self,
        sql: str,
        params: tuple[object, ...] | dict[str, Any],
        write: bool = False,
        wait_seconds: float | None = None,
    ) -> tuple[Any, ...] | None:
        with self.connection(write, wait_seconds) as connection:
            return connection.execute(sql, params).fetchone()

    def failed(self, reason: str) -> None:
        """Count a failure the caller handled into the same log line as the pool's own."""
        self._failures.failed(reason)

    def check_health(self) -> None:
        """Raise when the server does not answer within ``HEALTH_PROBE_WAIT_SECONDS``, answers
        but takes no writes (a standby, or a primary demoted by a failover while this process
        kept its address), or refused the last write (a full disk) with none succeeding since."""
        if self._probe.read_only_setting() != "off":
            raise Unavailable("PostgreSQL takes no writes: transaction_read_only is on")
        self._write_failures.check()

    def housekeeping(self) -> None:
        """Log the failures counted since their last line (``FailureLog.report_due``), and
        reconnect while requests wait with no connection idle: the pool tries to connect now
        (``check`` grows an empty pool that is short of connections), not only when the next
        request starts waiting. Requests already waiting when the server came back were
        otherwise left to their timeout: the first answer came 1.8 s after it was back."""
        self._failures.report_due()
        _POOL_WARNINGS.failures.report_due()
        stats = self._pool.get_stats()
        if stats.get("requests_waiting", 0) and not stats.get("pool_available", 0):
            self._pool.check()

    def close(self) -> None:
        self._pool.close()
        self._probe.close()


def configure(connection: psycopg.Connection[Any]) -> None:
    """Every pooled connection: a bound on each statement (lock waits included), and generic
    plans for prepared statements.

    The hot statements (psycopg prepares each after 5 runs) look a row up by key. Left to
    choose, PostgreSQL kept re-planning the user view on every call once holds existed, as the
    generic plan's estimate for the tenant's expired holds looked dear: with 20,000 open holds
    a user-view call cost 440 µs (1,400 µs before autovacuum's ANALYZE) against 150 µs with the
    generic plan. Reserve and log calls were no slower with it (measured on a probe database).
    """
    connection.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
    connection.execute("SET plan_cache_mode = force_generic_plan")


class _PoolWarnings(logging.Filter):
    """psycopg_pool's warnings, a line for each failed connection attempt and each dropped
    connection (48 lines through a 6 s outage), counted into one ``FailureLog`` instead."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = FailureLog(log, "postgres pool")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        message = record.getMessage().strip().split("\n", 1)[0]
        self.failures.failed(_OBJECT_ADDRESS.sub("", message))
        return False


# " at 0x7f…" in an object's repr: one kind of failure per connection object otherwise.
_OBJECT_ADDRESS = re.compile(r" at 0x[0-9a-f]+")
_POOL_WARNINGS = _PoolWarnings()
logging.getLogger("psycopg.pool").addFilter(_POOL_WARNINGS)


class _HealthProbe:
    """Asks the server whether it takes writes, on a connection of its own, and waits at most
    ``HEALTH_PROBE_WAIT_SECONDS`` for the answer.

    Not through the pool: a pool busy serving requests is not a database that is down, and a
    pool whose server is down made the health check wait the pool's timeout (5 s). The probe
    runs in a thread of its own, one at a time: a check that finds one running waits for it,
    so a server that hangs holds one thread, not one per check.
    """

    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        self._lock = threading.Lock()
        self._running: threading.Thread | None = None
        # The last probe's answer: transaction_read_only, or why there is none.
        self._answer: tuple[str | None, str] = (None, "no probe of PostgreSQL has finished")
        self._connection: psycopg.Connection[Any] | None = None  # used by one probe at a time
        self._closed = False

    def read_only_setting(self) -> str:
        """``transaction_read_only`` as the server says it; ``Unavailable`` when it fails, does
        not answer in time, or the store is closed."""
        with self._lock:
            if self._closed:
                raise Unavailable("the store is closed")
            probe = self._running
            if probe is None or not probe.is_alive():
                probe = threading.Thread(target=self._probe, name="postgres-probe", daemon=True)
                self._running = probe
                probe.start()
        probe.join(HEALTH_PROBE_WAIT_SECONDS)
        if probe.is_alive():
            raise Unavailable(f"PostgreSQL did not answer within {HEALTH_PROBE_WAIT_SECONDS} s")
        setting, failure = self._answer
        if setting is None:
            raise Unavailable(failure)
        return setting

    def _probe(self) -> None:
        try:
            connection = self._connection
            if connection is None or _closed_by_server(connection):
                if connection is not None:
                    connection.close()
                self._connection = None
                connection = psycopg.connect(
                    self._database_url,
                    autocommit=True,
                    connect_timeout=PROBE_CONNECT_TIMEOUT_SECONDS,
                )
                self._connection = connection
            row = connection.execute("SELECT current_setting('transaction_read_only')").fetchone()
            self._answer = ("on" if row is None else row[0], "")
        except Exception as error:  # whatever it is, the last answer must not stand
            if self._connection is not None:
                self._connection.close()
                self._connection = None
            self._answer = (None, f"PostgreSQL probe failed: {first_line(error)}")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            probe = self._running
        if probe is not None:
            probe.join(HEALTH_PROBE_WAIT_SECONDS)
        if self._connection is not None and (probe is None or not probe.is_alive()):
            self._connection.close()


def _closed_by_server(connection: psycopg.Connection[Any]) -> bool:
    """Whether an idle connection has been closed by the server, asked without a round trip.

    An idle connection has nothing to read unless the server said goodbye (the FATAL message
    of a shutdown or pg_terminate_backend) or closed the socket: one poll of the socket tells.
    A healthy connection found readable for another reason is only replaced.
    """
    if connection.closed:
        return True
    poller = select.poll()
    poller.register(connection.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def first_line(error: Exception) -> str:
    """libpq's and the server's reason, without the context lines (they never carry the
    password)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else "no answer"


def describe(database_url: str) -> str:
    """Host, port and database of a URL, never its password."""
    try:
        parts = psycopg.conninfo.conninfo_to_dict(database_url)
    except psycopg.ProgrammingError:
        return "(unparseable DATABASE_URL)"
    host = parts.get("host", "localhost")
    return f"{host}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"
