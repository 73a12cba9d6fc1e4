"""The production store: PostgreSQL through psycopg 3, on the pool of ``postgres_connections``.

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

Over 500 lines for one job: the ledger on PostgreSQL, one short method for each of the ~30
operations of ``LedgerStore``. What is not that job lives apart: the connections, their failures
and the health probe (``postgres_connections``), the statements both stores run (``ledger_sql``,
``flows_sql``), the flows' reads and repairs (``postgres_flows``) and the plpgsql functions
(``postgres_migrations``).
"""

import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg

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
)
from core.money import Money
from core.reconcile import EXPIRED_HOLD_GRACE_MS, Check, Drift
from core.reservations import Reservation, ReservationState, check_release
from core.resets import (
    OpenPeriods,
    PeriodSummary,
    ResetOutcome,
    ResetRequest,
    ResetRun,
    forced_reset_notice,
    reset_refusal,
)
from core.store import ledger_sql, postgres_flows
from core.store.base import (
    USER_VIEW_COLUMNS,
    GroupBy,
    migration_scripts,
    newer_migrations,
    user_view_from_row,
)
from core.store.flows_sql import backfill_note, pg_params
from core.store.ledger_sql import request_from_row
from core.store.postgres_connections import (
    CONNECT_TIMEOUT_SECONDS,
    METRICS_POOL_WAIT_SECONDS,
    PostgresConnections,
    configure,
    first_line,
)
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
_TENANT_EXISTS_SQL = pg_params(ledger_sql.TENANT_EXISTS_SQL)
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
_UNFINISHED_RESET_SQL = pg_params(ledger_sql.UNFINISHED_RESET_SQL)
_INSERT_RESET_RUN_SQL = pg_params(ledger_sql.INSERT_RESET_RUN_SQL)
_INSERT_RESET_LANE_SQL = pg_params(ledger_sql.INSERT_RESET_LANE_SQL)
_ENSURE_RESET_LANE_SQL = pg_params(ledger_sql.ENSURE_RESET_LANE_SQL)
_COUNT_RESET_LANES_SQL = pg_params(ledger_sql.COUNT_RESET_LANES_SQL)
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
        self._clock_ms = clock_ms
        self._db = PostgresConnections(
            database_url,
            clock_ms,
            pool_size=pool_size,
            pool_timeout_seconds=pool_timeout_seconds,
        )
        try:
            with self._db.setup_connection() as connection:
                self.applied_migrations, self.newer_migrations = self._migrate(connection)
                warnings = [AUTOVACUUM_OFF_WARNING] if autovacuum_off(connection) else []
                self.configuration_warnings = warnings
        except psycopg.Error as error:
            # Not a traceback at start-up: a read-only server (a standby), a role that may not
            # create tables.
            self._db.close()
            raise ConfigurationError(
                f"DATABASE_URL: cannot migrate PostgreSQL {self._db.described}: {first_line(error)}"
            ) from None
        except BaseException:
            self._db.close()
            raise
        self._last_sweep_ms = 0
        self._sweep_lock = threading.Lock()
        self._closing = threading.Event()
        self._housekeeper = threading.Thread(
            target=self._housekeeping_loop, name="postgres-housekeeper", daemon=True
        )
        self._housekeeper.start()

    def close(self) -> None:
        self._closing.set()
        self._housekeeper.join(timeout=CONNECT_TIMEOUT_SECONDS)
        self._db.close()

    def check_health(self) -> None:
        self._db.check_health()

    # -- schema ------------------------------------------------------------------------------

    def _migrate(self, connection: psycopg.Connection[Any]) -> tuple[list[str], list[str]]:
        """Apply pending migrations, each in its own transaction, under an advisory lock, so
        of two processes starting at once one migrates and the other then finds it done.

        Returns the names applied, and those the database has that this release does not ship.
        """
        scripts = migration_scripts("postgres_migrations")
        done: list[str] = []
        # A migration (or the wait for another process's) may take longer than a request's
        # statement_timeout; it is lifted for this session while migrating.
        connection.execute("SET statement_timeout = 0")
        connection.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_NAMESPACE, LOCK_MIGRATIONS))
        try:
            connection.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                " name TEXT NOT NULL, applied_at BIGINT NOT NULL)"
            )
            recorded = connection.execute("SELECT version, name FROM schema_migrations").fetchall()
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
            configure(connection)
        return done, newer_migrations(recorded, scripts)

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
            self._db.one(
                "SELECT ledger_sweep_expired(%s, %s)",
                (now_ms, SWEEP_BATCH_MAX),
                write=True,
                wait_seconds=wait_seconds,
            )
        except LedgerError as error:
            self._db.failed(f"sweep of expired holds skipped a round: {error}")
        finally:
            self._sweep_lock.release()

    def _housekeeping_loop(self) -> None:
        """Sweep expired holds when no write comes along to do it, and let the connections
        report their failures and reconnect (``PostgresConnections.housekeeping``)."""
        while not self._closing.wait(SWEEP_INTERVAL_MS / 1000):
            self._db.housekeeping()
            # No longer than a round: waiting the pool's timeout through an outage held up the
            # reconnecting above for 5 s at a time.
            self._sweep_if_due(self._clock_ms(), SWEEP_INTERVAL_MS / 1000)

    # -- reads -------------------------------------------------------------------------------

    def read_user(self, user_id: str, now_ms: int) -> UserView | None:
        row = self._db.one(_READ_USER_SQL, (user_id, now_ms))
        return None if row is None else user_view_from_row(row)

    def user_id_by_email(self, email: str) -> str | None:
        row = self._db.one(_USER_ID_BY_EMAIL_SQL, {"email_key": email.casefold()})
        return None if row is None else row[0]

    def tenant_exists(self, tenant_id: str) -> bool:
        return self._db.one(_TENANT_EXISTS_SQL, {"id": tenant_id}) is not None

    def count_open_reservations(self, now_ms: int) -> int:
        """For /metrics: waits ``METRICS_POOL_WAIT_SECONDS`` at most for a connection."""
        with self._db.connection(wait_seconds=METRICS_POOL_WAIT_SECONDS) as connection:
            row = connection.execute(_COUNT_OPEN_RESERVATIONS_SQL, {"now": now_ms}).fetchone()
        assert row is not None
        return int(row[0])

    def list_products(self) -> list[Product]:
        with self._db.connection() as connection:
            rows = connection.execute(_LIST_PRODUCTS_SQL).fetchall()
        return ledger_sql.products_from_rows(rows)

    def usage_groups(
        self, user_id: str, from_ms: int, to_ms: int, group_by: GroupBy
    ) -> list[UsageGroup]:
        key = "model" if group_by == "model" else f"created_at / {USAGE_BUCKET_MS}"
        with self._db.connection() as connection:
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
        row = self._db.one(
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
        with self._db.connection(write=True) as connection:
            return _log_usage(connection, record, response_time_ms, now_ms)

    def log_usage_many(
        self, entries: list[tuple[UsageRecord, int | None]], now_ms: int
    ) -> list[LogOutcome | LedgerError]:
        """Each record its own ``ledger_log_usage`` transaction, on one pooled connection."""
        self._sweep_if_due(now_ms)
        outcomes: list[LogOutcome | LedgerError] = []
        with self._db.connection(write=True) as connection:
            for record, response_time_ms in entries:
                try:
                    outcomes.append(_log_usage(connection, record, response_time_ms, now_ms))
                except LedgerError as refused:
                    outcomes.append(refused.with_traceback(None))
        return outcomes

    def backfill_usage(self, record: UsageRecord, source: str, now_ms: int) -> bool:
        """``log_usage`` and, when it created the usage, its audit row: one transaction."""
        with self._db.connection(write=True) as connection, connection.transaction():
            outcome = _log_usage(connection, record, None, now_ms)
            if outcome.created:
                backfilled = Drift(Check.BACKFILL, record.request_id, 0, record.cost)
                postgres_flows.record_repair(connection, backfilled, backfill_note(source), now_ms)
        return outcome.created

    def release(self, request_id: str, now_ms: int) -> Reservation:
        self._sweep_if_due(now_ms)
        row = self._db.one(_RELEASE_SQL, (request_id, now_ms), write=True)
        if row is None:
            raise NotFound("no reservation with this request_id", request_id=request_id)
        reservation = ledger_sql.hold_from_row(request_id, row[:-1])
        released = row[-1]
        assert reservation is not None, request_id
        assert check_release(reservation) == released, (reservation, released)
        return reservation

    # -- resets ------------------------------------------------------------------------------

    def start_reset(self, request: ResetRequest, now_ms: int) -> ResetOutcome | ResetRun:
        """The reset rule is checked under the resets' lock, in the transaction that starts it."""
        label = request.label
        with self._db.connection(write=True) as connection, connection.transaction():
            connection.execute(
                "SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_NAMESPACE, LOCK_RESETS)
            )
            unfinished = connection.execute(_UNFINISHED_RESET_SQL).fetchone()
            if unfinished is not None:
                run = {"run_id": unfinished[0]}
                connection.execute(_ENSURE_RESET_LANE_SQL, run)
                lanes = connection.execute(_COUNT_RESET_LANES_SQL, run).fetchone()
                assert lanes is not None
                return ledger_sql.unfinished_run(unfinished, int(lanes[0]), request)
            if request.apply_once:
                done = connection.execute(_APPLIED_RESET_SQL, {"label": label}).fetchone()
                if done is not None:
                    return ResetOutcome(label, 0, True)
            bounds = connection.execute(
                'SELECT (SELECT MIN(period_label COLLATE "C") FROM users),'
                ' (SELECT MAX(period_label COLLATE "C") FROM users)'
            ).fetchone()
            assert bounds is not None
            refusal = reset_refusal(request, OpenPeriods(bounds[0], bounds[1]))
            if refusal is not None:
                raise refusal
            parameters = ledger_sql.reset_run_params(request, now_ms)
            row = connection.execute(_INSERT_RESET_RUN_SQL, parameters).fetchone()
            assert row is not None
            run_id = int(row[0])
            lane_rows = ledger_sql.reset_lane_params(run_id, _lane_lasts(connection, request))
            connection.cursor().executemany(_INSERT_RESET_LANE_SQL, lane_rows)
        return ResetRun(run_id, label, request.apply_once, True, len(lane_rows))

    def reset_batch(self, run_id: int, lane: int, users_max: int, now_ms: int) -> bool:
        """One call of ``ledger_reset_lane_batch``: batches of different lanes run at once."""
        assert lane >= 0 and users_max > 0
        row = self._db.one(
            "SELECT ledger_reset_lane_batch(%s, %s, %s, %s)",
            (run_id, lane, users_max, now_ms),
            write=True,
        )
        assert row is not None
        return bool(row[0])

    def finish_reset(self, run_id: int, now_ms: int) -> ResetOutcome | None:
        """One call of ``ledger_reset_finish``; a forced run's notice joins its commit."""
        with self._db.connection(write=True) as connection, connection.transaction():
            row = connection.execute(
                "SELECT label, users_reset, finished, finished_now, forced"
                " FROM ledger_reset_finish(%s, %s)",
                (run_id, now_ms),
            ).fetchone()
            assert row is not None
            label, users_reset, finished, finished_now, forced = row
            if finished_now and forced:
                notice = forced_reset_notice(label, users_reset)
                parameters = {"subject": notice.subject, "body": notice.body, "now": now_ms}
                connection.execute(_INSERT_ADMIN_NOTICE_SQL, parameters)
        return ResetOutcome(label, int(users_reset), False) if finished else None

    def closed_period_summary(self, label: str, top_n: int) -> PeriodSummary:
        with self._db.connection() as connection:
            return postgres_flows.closed_period_summary(connection, label, top_n)

    # -- the flows: alert outbox, reconciliation, retention ----------------------------------

    def pending_admin_notices(self, limit: int) -> list[AdminNotice]:
        assert limit > 0
        with self._db.connection() as connection:
            rows = connection.execute(_PENDING_ADMIN_NOTICES_SQL, {"limit": limit}).fetchall()
        return ledger_sql.notices_from_rows(rows)

    def admin_notice_delivered(self, notice_id: int, now_ms: int) -> None:
        with self._db.connection(write=True) as connection:
            connection.execute(_ADMIN_NOTICE_DELIVERED_SQL, {"id": notice_id, "now": now_ms})

    def pending_alerts(self, after_id: int, limit: int) -> list[Alert]:
        with self._db.connection() as connection:
            return postgres_flows.pending_alerts(connection, after_id, limit)

    def record_alert_attempt(
        self, alert_id: int, channels_done: frozenset[AlertChannel], error: str | None, now_ms: int
    ) -> None:
        with self._db.connection(write=True) as connection:
            postgres_flows.record_alert_attempt(connection, alert_id, channels_done, error, now_ms)

    def find_drift(self, now_ms: int, expired_grace_ms: int, limit: int) -> list[Drift]:
        with self._db.connection() as connection:
            return postgres_flows.find_drift(connection, now_ms, expired_grace_ms, limit)

    def repair_drift(self, drift: Drift, now_ms: int) -> Drift | None:
        """One write transaction; repairs run one at a time across processes."""
        with self._db.connection(write=True) as connection, connection.transaction():
            connection.execute(
                "SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_NAMESPACE, LOCK_REPAIRS)
            )
            return postgres_flows.repair_drift(connection, drift, now_ms, EXPIRED_HOLD_GRACE_MS)

    def delete_closed_reservations(self, closed_before_ms: int, limit: int) -> int:
        """At most ``limit`` closed holds, in the order the scan meets them; the caller repeats
        while a batch comes back full. A closed hold never reopens, and the schema refuses to
        delete an open one."""
        assert limit > 0
        with self._db.connection(write=True) as connection:
            return connection.execute(
                "DELETE FROM reservations WHERE request_id IN (SELECT request_id FROM reservations"
                " WHERE state <> 'open' AND closed_at < %s LIMIT %s)",
                (closed_before_ms, limit),
            ).rowcount

    # -- administration: short transactions --------------------------------------------------

    def provision_user(self, user: NewUser, now_ms: int) -> UserView:
        parameters = ledger_sql.new_user_params(user, now_ms)
        with self._db.connection(write=True) as connection, connection.transaction():
            # Shared with other provisionings and a reset's batches, exclusive with its start.
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
        row = self._db.one(put_sql, ledger_sql.put_params(plan, now_ms), write=True)
        assert row is not None
        return bool(row[0])

    def update_user(
        self, user_id: str, status: UserStatus | None, product_id: str | None, now_ms: int
    ) -> UserView:
        with self._db.connection(write=True) as connection, connection.transaction():
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
        with self._db.connection(write=True) as connection, connection.transaction():
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


def autovacuum_off(connection: psycopg.Connection[Any]) -> bool:
    """Whether the server runs without autovacuum (see ``AUTOVACUUM_OFF_WARNING``)."""
    row = connection.execute("SELECT current_setting('autovacuum')").fetchone()
    return row is not None and row[0] == "off"


def _lane_lasts(connection: psycopg.Connection[Any], request: ResetRequest) -> list[str]:
    """Where a new run splits into lanes (``ledger_sql.reset_lane_params``): every lane but the
    last ends at an id that splits the users evenly in id order, each found past the one before
    in the primary key. A start over 1,000,000 users took 0.55 s with four lanes, where one query
    numbering every row took 0.95 s for two. None when the run gets one lane."""
    if request.lanes_max == 1:
        return []
    counted = connection.execute("SELECT COUNT(*) FROM users").fetchone()
    assert counted is not None
    users = int(counted[0])
    lanes = request.lane_count(users)
    lane_users = -(-users // lanes)
    lasts: list[str] = []
    for _ in range(lanes - 1):
        row = connection.execute(
            "SELECT id FROM users WHERE id > %s ORDER BY id OFFSET %s LIMIT 1",
            (lasts[-1] if lasts else "", lane_users - 1),
        ).fetchone()
        if row is None:  # the rounded-up lanes passed the last user: fewer lanes
            break
        lasts.append(row[0])
    return lasts


def _lock_user(connection: psycopg.Connection[Any], user_id: str) -> None:
    found = connection.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", (user_id,))
    if found.fetchone() is None:
        raise NotFound("unknown user", user_id=user_id)


def _require_user(connection: psycopg.Connection[Any], user_id: str, now_ms: int) -> UserView:
    row = connection.execute(_READ_USER_SQL, (user_id, now_ms)).fetchone()
    if row is None:
        raise NotFound("unknown user", user_id=user_id)
    return user_view_from_row(row)
