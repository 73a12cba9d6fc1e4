"""The production store: PostgreSQL through psycopg 3 and a bounded connection pool.

Every connection is in autocommit. A hot write (a hold, a log, a release) is one call of a
plpgsql function from ``postgres_migrations`` — one round trip and one transaction that locks
the user's row (``SELECT … FOR UPDATE``) before it reads the figures it decides on, so processes
on many machines cannot overspend or double-charge. The functions only write what
``core.budget``, ``core.reservations`` and ``core.usage`` allow: they return what they found
and did, this module asks the rules in ``core`` with it, raises their errors, and asserts that
the database's decision agreed (``ledger_log_usage`` also writes the alerts of
``core.alerts.crossings``, from the thresholds passed in). Administrative writes run as short
transactions here; the flows' reads and repairs in ``postgres_flows``. A check without a hold
is one read. Counters, CHECKs and append-only history are kept by the schema's triggers, as in
SQLite.
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

from core.accounts import CreditGrant, NewUser, Product, Tenant, UserView, check_grant
from core.alerts import (
    ALERT_THRESHOLDS_PERCENT,
    AdminNotice,
    Alert,
    AlertChannel,
    AlertSubject,
    crossings,
)
from core.budget import CheckResult, UserStatus, check_hold
from core.errors import (
    ConfigurationError,
    Duplicate,
    Invalid,
    LedgerError,
    NotFound,
    Unavailable,
)
from core.failure_log import FailureLog
from core.money import Money
from core.reconcile import EXPIRED_HOLD_GRACE_MS, Check, Drift
from core.reservations import Reservation, ReservationState, check_release
from core.resets import (
    OpenPeriods,
    PeriodSummary,
    ResetOutcome,
    ResetRequest,
    forced_reset_notice,
    reset_refusal,
)
from core.store import ledger_sql, postgres_flows
from core.store.base import (
    USER_VIEW_COLUMNS,
    GroupBy,
    WriteFailures,
    migration_scripts,
    newer_migrations,
    user_view_from_row,
)
from core.store.flows_sql import backfill_note, pg_params
from core.store.ledger_sql import request_from_row
from core.usage import LogOutcome, UsageGroup, UsageRecord, check_log

log = logging.getLogger(__name__)

# Without autovacuum the planner's statistics never change: plans made while the holds table
# was small scan all of it on every check once it has grown (measured: a check 0.75 → 1.7 ms
# after 4,600 holds, back after an ANALYZE), and updated counter rows leave dead versions.
AUTOVACUUM_OFF_WARNING = (
    "PostgreSQL runs with autovacuum off: planner statistics go stale, so checks slow down as"
    " holds accumulate, and updated counter rows bloat their tables; turn autovacuum on, or"
    " run VACUUM ANALYZE on this database every few minutes"
)
POOL_WAITING_MAX = 4_096
CONNECT_TIMEOUT_SECONDS = 10
# How long the pool retries replacing a lost connection before it gives up. With
# psycopg_pool's default (5 minutes) its attempts back off from 1 s, doubling, so after an
# outage of N seconds the next came up to N seconds after the server was back: requests failed
# for ~3 s more after a restart. Given up, the pool connects again only for a request that
# starts waiting; the housekeeper asks it to whenever requests wait with no connection idle
# (``_reconnect_while_waiting``): an attempt at least every ~0.75 s while requests wait.
POOL_RECONNECT_TIMEOUT_SECONDS = 0.5
# GET / waits this long for its probe of the server, and /metrics this long for a pooled
# connection, instead of the pool's timeout (5 s by default: past the health check's 3 s).
HEALTH_PROBE_WAIT_SECONDS = 0.5
METRICS_POOL_WAIT_SECONDS = 0.5
# libpq's shortest connect timeout; the probe is waited for less (HEALTH_PROBE_WAIT_SECONDS).
PROBE_CONNECT_TIMEOUT_SECONDS = 2
STATEMENT_TIMEOUT_MS = 30_000
SWEEP_INTERVAL_MS = 250
SWEEP_BATCH_MAX = 1_000
USAGE_BUCKET_MS = 15 * 60 * 1000
# Advisory lock keys (two-int form): 'bill' and a number; the schema uses 2 (resets), 3 (sweeps).
LOCK_NAMESPACE = 1651076204
LOCK_MIGRATIONS = 1
LOCK_RESETS = 2
LOCK_REPAIRS = 4

_FIGURES = ", ".join(USER_VIEW_COLUMNS)
_FIGURES_COUNT = len(USER_VIEW_COLUMNS)
_READ_USER_SQL = f"SELECT {_FIGURES} FROM ledger_user_view(%s, %s)"
_RESERVE_SQL = (
    "SELECT (f.figures).*, f.r_user_id, f.r_amount, f.r_state, f.r_expires_at, f.logged,"
    " f.placed FROM ledger_reserve(%s, %s, %s, %s, %s) f"
)
_LOG_USAGE_SQL = (
    "SELECT (f.figures).*, f.r_user_id, f.r_amount, f.r_state, f.r_expires_at, f.u_user_id,"
    " f.u_model, f.u_tokens_input, f.u_tokens_output, f.u_cost, f.inserted, f.user_alerts,"
    " f.tenant_alerts FROM ledger_log_usage(%s, %s, %s, %s, %s, %s, %s, %s, %s::INTEGER[]) f"
)
_RELEASE_SQL = "SELECT user_id, amount, state, expires_at, released FROM ledger_release(%s, %s)"
_REQUEST_END = _FIGURES_COUNT + ledger_sql.REQUEST_COLUMNS_COUNT

# PostgreSQL tells an insert from an update by the row's xmax (0: inserted) in one statement;
# SQLite asks first, inside its write transaction.
_PUT_PRODUCT_SQL = pg_params(f"{ledger_sql.PUT_PRODUCT_SQL} RETURNING xmax = 0")
_PUT_TENANT_SQL = pg_params(f"{ledger_sql.PUT_TENANT_SQL} RETURNING xmax = 0")
_PRODUCT_EXISTS_SQL = pg_params(ledger_sql.PRODUCT_EXISTS_SQL)
_LIST_PRODUCTS_SQL = pg_params(ledger_sql.LIST_PRODUCTS_SQL)
_NEW_USER_CONFLICTS_SQL = pg_params(ledger_sql.NEW_USER_CONFLICTS_SQL)
_INSERT_TENANT_IF_NEW_SQL = pg_params(ledger_sql.INSERT_TENANT_IF_NEW_SQL)
_INSERT_USER_SQL = pg_params(ledger_sql.INSERT_USER_SQL)
_SET_USER_PRODUCT_SQL = pg_params(ledger_sql.SET_USER_PRODUCT_SQL)
_SET_USER_STATUS_SQL = pg_params(ledger_sql.SET_USER_STATUS_SQL)
_USER_ID_BY_EMAIL_SQL = pg_params(ledger_sql.USER_ID_BY_EMAIL_SQL)
_CREDIT_GRANT_SQL = pg_params(ledger_sql.CREDIT_GRANT_SQL)
_INSERT_CREDIT_GRANT_SQL = pg_params(ledger_sql.INSERT_CREDIT_GRANT_SQL)
_ADD_CREDITS_SQL = pg_params(ledger_sql.ADD_CREDITS_SQL)
_COUNT_OPEN_RESERVATIONS_SQL = pg_params(ledger_sql.COUNT_OPEN_RESERVATIONS_SQL)
_APPLIED_RESET_SQL = pg_params(ledger_sql.APPLIED_RESET_SQL)
_PENDING_ADMIN_NOTICES_SQL = pg_params(ledger_sql.PENDING_ADMIN_NOTICES_SQL)
_INSERT_ADMIN_NOTICE_SQL = pg_params(ledger_sql.INSERT_ADMIN_NOTICE_SQL)
_ADMIN_NOTICE_DELIVERED_SQL = pg_params(ledger_sql.ADMIN_NOTICE_DELIVERED_SQL)


class PostgresStore:
    """``LedgerStore`` on PostgreSQL; opening it applies pending migrations first."""

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
        self._clock_ms = clock_ms
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
            configure=_configure,
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
                f"DATABASE_URL: cannot connect to PostgreSQL {_describe(database_url)}"
                f" within {CONNECT_TIMEOUT_SECONDS} s: {_first_line(error)}"
            ) from None
        try:
            self.applied_migrations, self.newer_migrations = self._migrate()
            self.configuration_warnings = self._configuration_warnings()
        except psycopg.Error as error:
            # Not a traceback at start-up: a read-only server (a standby), a role that may not
            # create tables.
            self._pool.close()
            raise ConfigurationError(
                f"DATABASE_URL: cannot migrate PostgreSQL {_describe(database_url)}:"
                f" {_first_line(error)}"
            ) from None
        except BaseException:
            self._pool.close()
            raise
        self._last_sweep_ms = 0
        self._sweep_lock = threading.Lock()
        self._closing = threading.Event()
        self._housekeeper = threading.Thread(
            target=self._housekeeping_loop, name="postgres-housekeeper", daemon=True
        )
        self._housekeeper.start()

    # -- connections -------------------------------------------------------------------------

    @contextmanager
    def _connection(
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
            self._failures.failed(_first_line(error))
            if write:
                self._write_failures.failed(_first_line(error))
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

    def _one(
        self,
        sql: str,
        params: tuple[object, ...] | dict[str, Any],
        write: bool = False,
        wait_seconds: float | None = None,
    ) -> tuple[Any, ...] | None:
        with self._connection(write, wait_seconds) as connection:
            return connection.execute(sql, params).fetchone()

    def close(self) -> None:
        self._closing.set()
        self._housekeeper.join(timeout=CONNECT_TIMEOUT_SECONDS)
        self._pool.close()
        self._probe.close()

    def check_health(self) -> None:
        """Raise when the server does not answer within ``HEALTH_PROBE_WAIT_SECONDS``, answers
        but takes no writes (a standby, or a primary demoted by a failover while this process
        kept its address), or refused the last write (a full disk) with none succeeding since."""
        if self._probe.read_only_setting() != "off":
            raise Unavailable("PostgreSQL takes no writes: transaction_read_only is on")
        self._write_failures.check()

    # -- schema ------------------------------------------------------------------------------

    def _migrate(self) -> tuple[list[str], list[str]]:
        """Apply pending migrations, each in its own transaction, under an advisory lock, so
        of two processes starting at once one migrates and the other then finds it done.

        Returns the names applied, and those the database has that this release does not ship.
        """
        scripts = migration_scripts("postgres_migrations")
        done: list[str] = []
        with self._pool.connection() as connection:
            # A migration (or the wait for another process's) may take longer than a request's
            # statement_timeout; it is lifted for this session while migrating.
            connection.execute("SET statement_timeout = 0")
            connection.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_NAMESPACE, LOCK_MIGRATIONS))
            try:
                connection.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                    " name TEXT NOT NULL, applied_at BIGINT NOT NULL)"
                )
                recorded = connection.execute(
                    "SELECT version, name FROM schema_migrations"
                ).fetchall()
                applied = {version for version, _ in recorded}
                for script in scripts:
                    if script.version in applied:
                        continue
                    with connection.transaction():
                        connection.execute(script.sql.encode())
                        connection.execute(
                            "INSERT INTO schema_migrations (version, name, applied_at)"
                            " VALUES (%s, %s, %s)",
                            (script.version, script.name, self._clock_ms()),
                        )
                    done.append(script.name)
            finally:
                connection.execute(
                    "SELECT pg_advisory_unlock(%s, %s)", (LOCK_NAMESPACE, LOCK_MIGRATIONS)
                )
                _configure(connection)
        return done, newer_migrations(recorded, scripts)

    def _configuration_warnings(self) -> list[str]:
        with self._pool.connection() as connection:
            return [AUTOVACUUM_OFF_WARNING] if autovacuum_off(connection) else []

    # -- expired holds -----------------------------------------------------------------------

    def _sweep_if_due(self, now_ms: int, wait_seconds: float | None = None) -> None:
        """Mark holds past expiry ``expired`` at most every ``SWEEP_INTERVAL_MS``, one sweeper
        per process (and, by an advisory lock in the function, one across processes); waits
        ``wait_seconds`` at most for a connection (None: the pool's timeout)."""
        if now_ms - self._last_sweep_ms < SWEEP_INTERVAL_MS:
            return
        if not self._sweep_lock.acquire(blocking=False):
            return
        try:
            self._last_sweep_ms = now_ms
            self._one(
                "SELECT ledger_sweep_expired(%s, %s)",
                (now_ms, SWEEP_BATCH_MAX),
                write=True,
                wait_seconds=wait_seconds,
            )
        except LedgerError as error:
            self._failures.failed(f"sweep of expired holds skipped a round: {error}")
        finally:
            self._sweep_lock.release()

    def _housekeeping_loop(self) -> None:
        """Sweep expired holds when no write comes along to do it, log the failures counted
        since their last line (``FailureLog.report_due``), and reconnect while requests wait."""
        while not self._closing.wait(SWEEP_INTERVAL_MS / 1000):
            self._failures.report_due()
            _POOL_WARNINGS.failures.report_due()
            self._reconnect_while_waiting()
            # No longer than a round: waiting the pool's timeout through an outage held up the
            # reconnecting above for 5 s at a time.
            self._sweep_if_due(self._clock_ms(), SWEEP_INTERVAL_MS / 1000)

    def _reconnect_while_waiting(self) -> None:
        """Requests wait and no connection is idle: the pool tries to connect now (``check``
        grows an empty pool that is short of connections), not only when the next request
        starts waiting. Requests already waiting when the server came back were otherwise
        left to their timeout: the first answer came 1.8 s after it was back."""
        stats = self._pool.get_stats()
        if stats.get("requests_waiting", 0) and not stats.get("pool_available", 0):
            self._pool.check()

    # -- reads -------------------------------------------------------------------------------

    def read_user(self, user_id: str, now_ms: int) -> UserView | None:
        row = self._one(_READ_USER_SQL, (user_id, now_ms))
        return None if row is None else user_view_from_row(row)

    def user_id_by_email(self, email: str) -> str | None:
        row = self._one(_USER_ID_BY_EMAIL_SQL, {"email_key": email.casefold()})
        return None if row is None else row[0]

    def count_open_reservations(self, now_ms: int) -> int:
        """For /metrics: waits ``METRICS_POOL_WAIT_SECONDS`` at most for a connection."""
        with self._connection(wait_seconds=METRICS_POOL_WAIT_SECONDS) as connection:
            row = connection.execute(_COUNT_OPEN_RESERVATIONS_SQL, {"now": now_ms}).fetchone()
        assert row is not None
        return int(row[0])

    def list_products(self) -> list[Product]:
        with self._connection() as connection:
            rows = connection.execute(_LIST_PRODUCTS_SQL).fetchall()
        return ledger_sql.products_from_rows(rows)

    def usage_groups(
        self, user_id: str, from_ms: int, to_ms: int, group_by: GroupBy
    ) -> list[UsageGroup]:
        key = "model" if group_by == "model" else f"created_at / {USAGE_BUCKET_MS}"
        with self._connection() as connection:
            rows = connection.execute(
                f"SELECT {key}, COUNT(*), SUM(tokens_input), SUM(tokens_output), SUM(cost)"
                " FROM usage WHERE user_id = %s AND created_at >= %s AND created_at < %s"
                f" GROUP BY {key} ORDER BY {key}",
                (user_id, from_ms, to_ms),
            ).fetchall()
        return [
            UsageGroup(
                key if group_by == "model" else key * USAGE_BUCKET_MS,
                requests,
                int(tokens_input),
                int(tokens_output),
                Money(int(cost)),
            )
            for key, requests, tokens_input, tokens_output, cost in rows
        ]

    # -- the gateway's writes: one function call each ---------------------------------------

    def reserve(
        self, user_id: str, request_id: str, amount: Money, expires_at_ms: int, now_ms: int
    ) -> CheckResult:
        self._sweep_if_due(now_ms)
        row = self._one(
            _RESERVE_SQL, (user_id, request_id, amount, expires_at_ms, now_ms), write=True
        )
        if row is None:
            raise NotFound("unknown user", user_id=user_id)
        view = user_view_from_row(row[:_FIGURES_COUNT])
        existing = ledger_sql.hold_from_row(request_id, row[_FIGURES_COUNT:-2])
        logged, placed = row[-2:]

        def place() -> Reservation:
            # ledger_reserve wrote it already, deciding the same in SQL; asserted to agree below.
            return Reservation(request_id, user_id, amount, ReservationState.OPEN, expires_at_ms)

        result = check_hold(
            view.budget, amount, existing, logged, user_id, request_id, now_ms, place
        )
        assert placed == (existing is None and result.allowed), (result.status, placed)
        return result

    def log_usage(
        self, record: UsageRecord, response_time_ms: int | None, now_ms: int
    ) -> LogOutcome:
        self._sweep_if_due(now_ms)
        with self._connection(write=True) as connection:
            return _log_usage(connection, record, response_time_ms, now_ms)

    def backfill_usage(self, record: UsageRecord, source: str, now_ms: int) -> bool:
        """``log_usage`` and, when it created the usage, its audit row: one transaction."""
        with self._connection(write=True) as connection, connection.transaction():
            outcome = _log_usage(connection, record, None, now_ms)
            if outcome.created:
                backfilled = Drift(Check.BACKFILL, record.request_id, 0, record.cost)
                postgres_flows.record_repair(connection, backfilled, backfill_note(source), now_ms)
        return outcome.created

    def release(self, request_id: str, now_ms: int) -> Reservation:
        self._sweep_if_due(now_ms)
        row = self._one(_RELEASE_SQL, (request_id, now_ms), write=True)
        if row is None:
            raise NotFound("no reservation with this request_id", request_id=request_id)
        reservation = ledger_sql.hold_from_row(request_id, row[:-1])
        released = row[-1]
        assert reservation is not None, request_id
        assert check_release(reservation) == released, (reservation, released)
        return reservation

    # -- resets ------------------------------------------------------------------------------

    def reset_periods(self, request: ResetRequest, now_ms: int) -> ResetOutcome:
        """The reset rule is checked under the resets' lock, in the reset's transaction."""
        label = request.label
        with self._connection(write=True) as connection, connection.transaction():
            connection.execute(
                "SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_NAMESPACE, LOCK_RESETS)
            )
            if request.apply_once:
                done = connection.execute(_APPLIED_RESET_SQL, {"label": label}).fetchone()
                if done is not None:
                    return ResetOutcome(0, True)
            bounds = connection.execute(
                'SELECT MIN(period_label COLLATE "C"), MAX(period_label COLLATE "C") FROM users'
            ).fetchone()
            assert bounds is not None
            refusal = reset_refusal(request, OpenPeriods(bounds[0], bounds[1]))
            if refusal is not None:
                raise refusal
            row = connection.execute(
                "SELECT users_reset, already_done FROM ledger_reset_before(%s, %s, %s, %s)",
                (label, request.apply_once, request.close_before_label, now_ms),
            ).fetchone()
            assert row is not None
            outcome = ResetOutcome(int(row[0]), bool(row[1]))
            if request.force and not outcome.already_done:
                notice = forced_reset_notice(label, outcome.users_reset)
                parameters = {"subject": notice.subject, "body": notice.body, "now": now_ms}
                connection.execute(_INSERT_ADMIN_NOTICE_SQL, parameters)
        return outcome

    def closed_period_summary(self, label: str, top_n: int) -> PeriodSummary:
        with self._connection() as connection:
            return postgres_flows.closed_period_summary(connection, label, top_n)

    # -- the flows: alert outbox, reconciliation, retention ----------------------------------

    def pending_admin_notices(self, limit: int) -> list[AdminNotice]:
        assert limit > 0
        with self._connection() as connection:
            rows = connection.execute(_PENDING_ADMIN_NOTICES_SQL, {"limit": limit}).fetchall()
        return ledger_sql.notices_from_rows(rows)

    def admin_notice_delivered(self, notice_id: int, now_ms: int) -> None:
        with self._connection(write=True) as connection:
            connection.execute(_ADMIN_NOTICE_DELIVERED_SQL, {"id": notice_id, "now": now_ms})

    def pending_alerts(self, after_id: int, limit: int) -> list[Alert]:
        with self._connection() as connection:
            return postgres_flows.pending_alerts(connection, after_id, limit)

    def record_alert_attempt(
        self, alert_id: int, channels_done: frozenset[AlertChannel], error: str | None, now_ms: int
    ) -> None:
        with self._connection(write=True) as connection:
            postgres_flows.record_alert_attempt(connection, alert_id, channels_done, error, now_ms)

    def find_drift(self, now_ms: int, expired_grace_ms: int, limit: int) -> list[Drift]:
        with self._connection() as connection:
            return postgres_flows.find_drift(connection, now_ms, expired_grace_ms, limit)

    def repair_drift(self, drift: Drift, now_ms: int) -> Drift | None:
        """One write transaction; repairs run one at a time across processes."""
        with self._connection(write=True) as connection, connection.transaction():
            connection.execute(
                "SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_NAMESPACE, LOCK_REPAIRS)
            )
            return postgres_flows.repair_drift(connection, drift, now_ms, EXPIRED_HOLD_GRACE_MS)

    def delete_closed_reservations(self, closed_before_ms: int, limit: int) -> int:
        """At most ``limit`` closed holds, in the order the scan meets them; the caller repeats
        while a batch comes back full. A closed hold never reopens, and the schema refuses to
        delete an open one."""
        assert limit > 0
        with self._connection(write=True) as connection:
            return connection.execute(
                "DELETE FROM reservations WHERE request_id IN (SELECT request_id FROM reservations"
                " WHERE state <> 'open' AND closed_at < %s LIMIT %s)",
                (closed_before_ms, limit),
            ).rowcount

    # -- administration: short transactions --------------------------------------------------

    def provision_user(self, user: NewUser, now_ms: int) -> UserView:
        parameters = ledger_sql.new_user_params(user, now_ms)
        with self._connection(write=True) as connection, connection.transaction():
            # Shared with other provisionings, exclusive with a reset (ledger_reset).
            connection.execute(
                "SELECT pg_advisory_xact_lock_shared(%s, %s)", (LOCK_NAMESPACE, LOCK_RESETS)
            )
            conflicts = connection.execute(_NEW_USER_CONFLICTS_SQL, parameters).fetchone()
            assert conflicts is not None
            ledger_sql.check_new_user(*conflicts)
            connection.execute(_INSERT_TENANT_IF_NEW_SQL, parameters)
            try:
                with connection.transaction():
                    connection.execute(_INSERT_USER_SQL, parameters)
            except psycopg.errors.UniqueViolation as error:
                # A concurrent provisioning took the id or the email first.
                field = "user_id" if error.diag.constraint_name == "users_pkey" else "email"
                raise Duplicate(
                    f"a user with this {field.removeprefix('user_')} exists", field=field
                ) from None
            return _require_user(connection, user.id, now_ms)

    def put_product(self, product: Product, now_ms: int) -> bool:
        return self._put(_PUT_PRODUCT_SQL, product, now_ms)

    def put_tenant(self, tenant: Tenant, now_ms: int) -> bool:
        return self._put(_PUT_TENANT_SQL, tenant, now_ms)

    def _put(self, put_sql: str, plan: Product | Tenant, now_ms: int) -> bool:
        """Create or replace a product or a tenant; True when created."""
        row = self._one(put_sql, ledger_sql.put_params(plan, now_ms), write=True)
        assert row is not None
        return bool(row[0])

    def update_user(
        self, user_id: str, status: UserStatus | None, product_id: str | None, now_ms: int
    ) -> UserView:
        with self._connection(write=True) as connection, connection.transaction():
            _lock_user(connection, user_id)
            if product_id is not None:
                known = connection.execute(_PRODUCT_EXISTS_SQL, {"id": product_id}).fetchone()
                if known is None:
                    raise Invalid("unknown product", field="product_id")
                parameters = {"id": user_id, "product_id": product_id, "now": now_ms}
                connection.execute(_SET_USER_PRODUCT_SQL, parameters)
            if status is not None:
                parameters = {"id": user_id, "status": status.value, "now": now_ms}
                connection.execute(_SET_USER_STATUS_SQL, parameters)
            return _require_user(connection, user_id, now_ms)

    def grant_credit(self, grant: CreditGrant, now_ms: int) -> tuple[bool, UserView]:
        with self._connection(write=True) as connection, connection.transaction():
            # The grant_id's lock makes a concurrent replay for another user wait and conflict.
            connection.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (grant.grant_id,)
            )
            _lock_user(connection, grant.user_id)
            view = _require_user(connection, grant.user_id, now_ms)
            parameters = ledger_sql.grant_params(grant, view.period_start_ms, now_ms)
            existing = connection.execute(_CREDIT_GRANT_SQL, parameters).fetchone()
            granted = None if existing is None else CreditGrant(*existing)
            if not check_grant(view.budget, granted, grant):
                return False, view
            connection.execute(_INSERT_CREDIT_GRANT_SQL, parameters)
            connection.execute(_ADD_CREDITS_SQL, parameters)
            return True, _require_user(connection, grant.user_id, now_ms)


def _log_usage(
    connection: psycopg.Connection[Any],
    record: UsageRecord,
    response_time_ms: int | None,
    now_ms: int,
) -> LogOutcome:
    """One call of ``ledger_log_usage``: the usage, its hold settled and its alerts written."""
    row = connection.execute(
        _LOG_USAGE_SQL,
        (
            record.request_id,
            record.user_id,
            record.model,
            record.tokens_input,
            record.tokens_output,
            record.cost,
            response_time_ms,
            now_ms,
            list(ALERT_THRESHOLDS_PERCENT),
        ),
    ).fetchone()
    if row is None:
        raise NotFound("unknown user", user_id=record.user_id)
    view = user_view_from_row(row[:_FIGURES_COUNT])
    reservation, logged = request_from_row(record.request_id, row[_FIGURES_COUNT:_REQUEST_END])
    inserted, user_alerts, tenant_alerts = row[_REQUEST_END:]
    try:
        outcome = check_log(view.budget, logged, reservation, record, now_ms)
    except LedgerError:
        assert not inserted, record.request_id
        raise
    assert inserted == outcome.created, record.request_id
    if outcome.created:
        found = crossings(view.budget, record.cost, record.user_id, view.tenant_id)
        written = [(AlertSubject.USER, t) for t in user_alerts]
        written += [(AlertSubject.TENANT, t) for t in tenant_alerts]
        assert [(c.subject, c.threshold_percent) for c in found] == written, (found, written)
    return outcome


def _configure(connection: psycopg.Connection[Any]) -> None:
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
            self._answer = (None, f"PostgreSQL probe failed: {_first_line(error)}")

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


def autovacuum_off(connection: psycopg.Connection[Any]) -> bool:
    """Whether the server runs without autovacuum (see ``AUTOVACUUM_OFF_WARNING``)."""
    row = connection.execute("SELECT current_setting('autovacuum')").fetchone()
    return row is not None and row[0] == "off"


def _first_line(error: Exception) -> str:
    """libpq's and the server's reason, without the context lines (they never carry the
    password)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else "no answer"


def _describe(database_url: str) -> str:
    """Host, port and database of a URL, never its password."""
    try:
        parts = psycopg.conninfo.conninfo_to_dict(database_url)
    except psycopg.ProgrammingError:
        return "(unparseable DATABASE_URL)"
    host = parts.get("host", "localhost")
    return f"{host}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


def _lock_user(connection: psycopg.Connection[Any], user_id: str) -> None:
    found = connection.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", (user_id,))
    if found.fetchone() is None:
        raise NotFound("unknown user", user_id=user_id)


def _require_user(connection: psycopg.Connection[Any], user_id: str, now_ms: int) -> UserView:
    row = connection.execute(_READ_USER_SQL, (user_id, now_ms)).fetchone()
    if row is None:
        raise NotFound("unknown user", user_id=user_id)
    return user_view_from_row(row)
