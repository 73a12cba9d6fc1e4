"""The embedded store: one SQLite file in WAL mode.

Reads run on a connection per thread. Writes are operations handed to a ``GroupCommitWriter``
(``group_commit``), which commits them in batches; between processes sharing the file its
leaders take turns on an ``flock`` of ``<file>-writelock`` beside it. A write is acknowledged
only after its commit, with ``synchronous=FULL`` by default, so an acknowledged write survives a
crash or power loss. A housekeeper thread runs a passive WAL checkpoint
once this process's writes have gathered (``CHECKPOINT_INTERVAL_MS``, ``CHECKPOINT_WRITES_MIN``),
so SQLite's automatic checkpoint (kept as the backstop) rarely lands inside a commit a client
waits on, and sweeps expired holds when no write comes along to do it.

Over 500 lines for one job: the ledger on SQLite, one short method for each of the ~30
operations of ``LedgerStore``. What is not that job lives apart: the writer (``group_commit``),
the schema (``sqlite_schema``), the statements both stores run (``ledger_sql``, ``flows_sql``),
the invariants (``sqlite_checks``) and the alert outbox (``sqlite_outbox``).
"""

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from core.accounts import CreditGrant, NewUser, Product, Tenant, UserView, check_grant
from core.alerts import AdminNotice, Alert, AlertChannel, crossings
from core.budget import CheckResult, UserStatus, check_hold
from core.errors import ConfigurationError, Invalid, LedgerError, NotFound
from core.failure_log import FailureLog
from core.money import COUNTER_MAX, NANOS_PER_UNIT, Money
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
from core.store import ledger_sql, sqlite_checks, sqlite_outbox
from core.store.base import (
    USER_VIEW_COLUMNS,
    GroupBy,
    user_view_from_row,
)
from core.store.flows_sql import backfill_note
from core.store.group_commit import (
    WRITE_QUEUE_MAX,
    WRITE_WAIT_SECONDS_MAX,
    GroupCommitWriter,
    ProcessWriteLock,
)
from core.store.ledger_sql import request_from_row
from core.store.sqlite_checks import record_repair
from core.store.sqlite_outbox import insert_alerts
from core.store.sqlite_schema import migrate_now
from core.usage import LogOutcome, UsageGroup, UsageRecord, check_log

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5_000
SWEEP_INTERVAL_MS = 250
# A checkpoint ends with an fsync of the database, and a commit waiting on its own fsync
# meanwhile waits for that one too: the fewer pages a checkpoint carries, the shorter the stall.
# On 1,000,000 users, where every write dirties pages of its own, one-connection p99 fell from
# 8.0-9.5 ms at 100 ms to 4.1-4.3 ms at 20 ms (log-usage; holds 6.2-54 -> 3.4-3.7 ms), with
# throughput at 32 connections inside the run-to-run swing; 10 and 5 ms cut the p99 further but
# cost throughput (measured with bench.run --large on 2 cores).
CHECKPOINT_INTERVAL_MS = 20
# ... and until this many writes have gathered, or CHECKPOINT_DELAY_MS_MAX after the first. At
# a gateway's rates (tens of writes a second) a checkpoint 20 ms after a commit was one per
# write, with its fsync and three thread wake-ups: at 50 holds a second the service's thread
# wake-ups per hold fell from 12.2 to 8.8 with this bound. Where the interval was measured, one
# connection on 1,000,000 users, a write takes about 0.8-1 ms, so 20 ms gathers more anyway.
CHECKPOINT_WRITES_MIN = 16
CHECKPOINT_DELAY_MS_MAX = 1_000
WAL_BYTES_KEPT_MAX = 64 * 1024 * 1024
CACHE_KIB_PER_CONNECTION = 16 * 1024
MMAP_BYTES_MAX = 4 * 1024 * 1024 * 1024
SWEEP_BATCH_MAX = 1_000
# The writers' lock file (``group_commit.ProcessWriteLock``): the database file's name with this
# suffix, beside it.
PROCESS_LOCK_SUFFIX = "-writelock"
USAGE_BUCKET_MS = 15 * 60 * 1000

_USER_VIEW_COLUMNS_SQL = """
SELECT u.id, u.email, u.product_id, u.tenant_id, u.status, u.period_label, u.period_start,
       u.created_at, p.monthly_budget, u.credits, u.used, u.held,
       (SELECT COALESCE(SUM(r.amount), 0) FROM reservations r
         WHERE r.user_id = u.id AND r.state = 'open' AND r.expires_at <= :now),
       t.monthly_budget, t.used, t.held,
       CASE WHEN t.monthly_budget IS NULL THEN 0 ELSE
         (SELECT COALESCE(SUM(r.amount), 0) FROM reservations r
           WHERE r.tenant_id = u.tenant_id AND r.state = 'open' AND r.expires_at <= :now) END
"""
_USER_VIEW_FROM_SQL = """
  FROM users u
  JOIN products p ON p.id = u.product_id
  JOIN tenants t ON t.id = u.tenant_id
"""
_USER_VIEW_SQL = f"{_USER_VIEW_COLUMNS_SQL}{_USER_VIEW_FROM_SQL} WHERE u.id = :user_id"

# The hold and the usage already recorded under one request_id (NULLs where there is none).
_REQUEST_COLUMNS_SQL = """
       rk.user_id, rk.amount, rk.state, rk.expires_at,
       uk.user_id, uk.model, uk.tokens_input, uk.tokens_output, uk.cost
"""
_REQUEST_SQL = f"""
SELECT {_REQUEST_COLUMNS_SQL}
  FROM (SELECT :request_id AS request_id) AS k
  LEFT JOIN reservations rk ON rk.request_id = k.request_id
  LEFT JOIN usage uk ON uk.request_id = k.request_id
"""
# Both in one statement, for the writes that read both (a hold, a usage): one SQLite round trip
# fewer on every such write. No row: no such user.
_USER_AND_REQUEST_SQL = f"""
{_USER_VIEW_COLUMNS_SQL}, {_REQUEST_COLUMNS_SQL}{_USER_VIEW_FROM_SQL}
  LEFT JOIN reservations rk ON rk.request_id = :request_id
  LEFT JOIN usage uk ON uk.request_id = :request_id
 WHERE u.id = :user_id
"""


def sqlite_path_from_url(database_url: str) -> Path:
    """``sqlite:///relative.db`` or ``sqlite:////absolute.db`` (SQLAlchemy's form) → a path."""
    prefix = "sqlite:///"
    if not database_url.startswith(prefix) or len(database_url) == len(prefix):
        raise ConfigurationError(
            "DATABASE_URL must look like sqlite:///relative/path.db or sqlite:////abs.db"
        )
    return Path(database_url[len(prefix) :])


class SqliteStore:
    """``LedgerStore`` on one SQLite file; opening it applies pending migrations first."""

    def __init__(
        self,
        path: Path,
        clock_ms: Callable[[], int],
        synchronous: str = "FULL",
        *,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
        write_wait_seconds_max: float = WRITE_WAIT_SECONDS_MAX,
        write_queue_max: int = WRITE_QUEUE_MAX,
    ) -> None:
        assert synchronous in ("FULL", "NORMAL"), synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._write_wait_seconds_max = write_wait_seconds_max
        self._path = path
        self._clock_ms = clock_ms
        self._synchronous = synchronous
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._failed_housekeeping = FailureLog(log, "sqlite housekeeping skipped a round")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with ExitStack() as opened:  # closes what was opened if a later step fails
                process_lock = ProcessWriteLock(path.with_name(path.name + PROCESS_LOCK_SUFFIX))
                opened.callback(process_lock.close)
                connection = self._connect()
                opened.callback(connection.close)
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA foreign_keys=ON")
                self.applied_migrations, self.newer_migrations = migrate_now(connection, clock_ms())
                self.configuration_warnings: list[str] = []
                self._writer = GroupCommitWriter(
                    connection,
                    process_lock,
                    clock_ms,
                    log,
                    busy_timeout_ms=busy_timeout_ms,
                    wait_seconds_max=write_wait_seconds_max,
                    queue_max=write_queue_max,
                    periodic=_sweep_expired,
                    periodic_interval_ms=SWEEP_INTERVAL_MS,
                )
                opened.pop_all()
        except (sqlite3.Error, OSError) as error:
            # Not a traceback at start-up: a file that is not a database, a folder that cannot
            # be written, a database another process keeps locked past the busy timeout.
            raise ConfigurationError(f"DATABASE_URL: cannot open {path}: {error}") from None
        self._write = self._writer.write
        self._closing = threading.Event()
        self._housekeeper = threading.Thread(
            target=self._housekeeping_loop, name="sqlite-housekeeper", daemon=True
        )
        self._housekeeper.start()

    # -- connections -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            connection.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
            connection.execute(f"PRAGMA synchronous={self._synchronous}")
            connection.execute(f"PRAGMA journal_size_limit={WAL_BYTES_KEPT_MAX}")
            connection.execute(f"PRAGMA cache_size=-{CACHE_KIB_PER_CONNECTION}")
            # Pages are read through one memory map shared by every connection, rather than
            # copied into each connection's own cache by a read() per page.
            connection.execute(f"PRAGMA mmap_size={MMAP_BYTES_MAX}")
        except BaseException:
            connection.close()
            raise
        return connection

    def _reader(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._connect()
            connection.execute("PRAGMA query_only=ON")
            self._local.connection = connection
            with self._readers_lock:
                self._readers.append(connection)
        return connection

    def close(self) -> None:
        self._closing.set()
        self._writer.interrupt_wait()  # wakes the housekeeper, which sees the store closing
        self._housekeeper.join(timeout=self._write_wait_seconds_max)
        self._writer.close()
        with self._readers_lock:
            for connection in self._readers:
                connection.close()
            self._readers.clear()

    def _housekeeping_loop(self) -> None:
        """Checkpoint the WAL after commits, and sweep expired holds when no write does it.

        Frequent passive checkpoints keep SQLite's own automatic checkpoint (the backstop) from
        landing, large, inside a commit a client waits on, and let the WAL restart from its
        beginning instead of growing. The thread sleeps until this process commits (or a sweep
        is due), then lets writes gather into one checkpoint: for ``CHECKPOINT_INTERVAL_MS``,
        and on until ``CHECKPOINT_WRITES_MIN`` have, or ``CHECKPOINT_DELAY_MS_MAX`` after the
        first. An idle server wakes only for the sweep.
        """
        connection = self._connect()
        writer = self._writer
        # Not the count now: a write committed while this thread was starting is still to be
        # checkpointed (a store written at once left its first commit in the WAL).
        checkpointed = 0
        last_sweep_ms = 0
        try:
            while not self._closing.is_set():
                writer.report_due()
                self._failed_housekeeping.report_due()
                try:
                    if writer.wait_for_writes(checkpointed + 1, SWEEP_INTERVAL_MS / 1000):
                        first = time.monotonic()
                        if self._closing.wait(CHECKPOINT_INTERVAL_MS / 1000):
                            break
                        gather_seconds = CHECKPOINT_DELAY_MS_MAX / 1000 - (time.monotonic() - first)
                        writer.wait_for_writes(
                            checkpointed + CHECKPOINT_WRITES_MIN, max(gather_seconds, 0.0)
                        )
                        if self._closing.is_set():
                            break
                        checkpointed = writer.writes_committed  # before: later writes count on
                        connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    now_ms = self._clock_ms()
                    if now_ms - last_sweep_ms >= SWEEP_INTERVAL_MS:
                        last_sweep_ms = now_ms
                        if _any_hold_expired(connection, now_ms):
                            self._write(_sweep_expired)
                except (sqlite3.Error, LedgerError) as error:
                    self._failed_housekeeping.failed(f"{type(error).__name__}: {error}")
        finally:
            connection.close()

    def check_health(self) -> None:
        self._reader().execute("SELECT 1").fetchone()
        self._writer.write_failures.check()

    # -- reads -------------------------------------------------------------------------------

    def read_user(self, user_id: str, now_ms: int) -> UserView | None:
        return _read_user(self._reader(), user_id, now_ms)

    def user_id_by_email(self, email: str) -> str | None:
        parameters = {"email_key": email.casefold()}
        row = self._reader().execute(ledger_sql.USER_ID_BY_EMAIL_SQL, parameters).fetchone()
        return None if row is None else row[0]

    def tenant_exists(self, tenant_id: str) -> bool:
        query = ledger_sql.TENANT_EXISTS_SQL
        return self._reader().execute(query, {"id": tenant_id}).fetchone() is not None

    def count_open_reservations(self, now_ms: int) -> int:
        query = ledger_sql.COUNT_OPEN_RESERVATIONS_SQL
        (count,) = self._reader().execute(query, {"now": now_ms}).fetchone()
        return int(count)

    def list_products(self) -> list[Product]:
        return ledger_sql.products_from_rows(self._reader().execute(ledger_sql.LIST_PRODUCTS_SQL))

    def usage_groups(
        self, user_id: str, from_ms: int, to_ms: int, group_by: GroupBy
    ) -> list[UsageGroup]:
        key = "model" if group_by == "model" else f"created_at / {USAGE_BUCKET_MS}"
        # SQLite's SUM of integers fails past 2^63 rather than widen, and a range may span many
        # periods of usage at COUNTER_MAX: whole dollars and the nano-dollars under them are
        # added apart, each sum as far from overflowing as the token sums beside them.
        rows = self._reader().execute(
            f"SELECT {key}, COUNT(*), SUM(tokens_input), SUM(tokens_output),"
            f" SUM(cost / {NANOS_PER_UNIT}), SUM(cost % {NANOS_PER_UNIT})"
            " FROM usage WHERE user_id = ? AND created_at >= ? AND created_at < ?"
            f" GROUP BY {key} ORDER BY {key}",
            (user_id, from_ms, to_ms),
        )
        return [
            UsageGroup(
                key if group_by == "model" else key * USAGE_BUCKET_MS,
                requests,
                tokens_input,
                tokens_output,
                Money(units * NANOS_PER_UNIT + nanos),
            )
            for key, requests, tokens_input, tokens_output, units, nanos in rows
        ]

    def closed_period_summary(self, label: str, top_n: int) -> PeriodSummary:
        return sqlite_outbox.closed_period_summary(self._reader(), label, top_n)

    def pending_admin_notices(self, limit: int) -> list[AdminNotice]:
        assert limit > 0
        query = ledger_sql.PENDING_ADMIN_NOTICES_SQL
        return ledger_sql.notices_from_rows(self._reader().execute(query, {"limit": limit}))

    def admin_notice_delivered(self, notice_id: int, now_ms: int) -> None:
        def operation(connection: sqlite3.Connection, _: int) -> None:
            parameters = {"id": notice_id, "now": now_ms}
            connection.execute(ledger_sql.ADMIN_NOTICE_DELIVERED_SQL, parameters)

        self._write(operation, one_statement=True)

    def pending_alerts(self, after_id: int, limit: int) -> list[Alert]:
        return sqlite_outbox.pending_alerts(self._reader(), after_id, limit)

    def find_drift(self, now_ms: int, expired_grace_ms: int, limit: int) -> list[Drift]:
        return sqlite_checks.find_drift(self._reader(), now_ms, expired_grace_ms, limit)

    # -- writes ------------------------------------------------------------------------------

    def record_alert_attempt(
        self, alert_id: int, channels_done: frozenset[AlertChannel], error: str | None, now_ms: int
    ) -> None:
        def operation(connection: sqlite3.Connection, _: int) -> None:
            sqlite_outbox.record_alert_attempt(connection, alert_id, channels_done, error, now_ms)

        self._write(operation, one_statement=True)

    def delete_closed_reservations(self, closed_before_ms: int, limit: int) -> int:
        """Oldest first: rowids follow insertion, so the scan finds old closed holds first."""
        assert limit > 0

        def operation(connection: sqlite3.Connection, _: int) -> int:
            return connection.execute(
                "DELETE FROM reservations WHERE rowid IN (SELECT rowid FROM reservations"
                " WHERE state <> 'open' AND closed_at < ? ORDER BY rowid LIMIT ?)",
                (closed_before_ms, limit),
            ).rowcount

        return self._write(operation, one_statement=True)

    def repair_drift(self, drift: Drift, now_ms: int) -> Drift | None:
        def operation(connection: sqlite3.Connection, _: int) -> Drift | None:
            return sqlite_checks.repair_drift(connection, drift, now_ms, EXPIRED_HOLD_GRACE_MS)

        return self._write(operation)

    def reserve(
        self, user_id: str, request_id: str, amount: Money, expires_at_ms: int, now_ms: int
    ) -> CheckResult:
        def operation(connection: sqlite3.Connection, _: int) -> CheckResult:
            view, existing, logged = _require_user_and_request(
                connection, user_id, request_id, now_ms
            )

            def place() -> Reservation:
                connection.execute(
                    "INSERT INTO reservations (request_id, user_id, tenant_id, amount, state,"
                    " expires_at, created_at) VALUES (?, ?, ?, ?, 'open', ?, ?)",
                    (request_id, user_id, view.tenant_id, amount, expires_at_ms, now_ms),
                )
                return Reservation(
                    request_id, user_id, amount, ReservationState.OPEN, expires_at_ms
                )

            return check_hold(
                view.budget,
                amount,
                existing,
                logged is not None,
                user_id,
                request_id,
                now_ms,
                place,
            )

        return self._write(operation, one_statement=True)

    def log_usage(
        self, record: UsageRecord, response_time_ms: int | None, now_ms: int
    ) -> LogOutcome:
        return self._write(_log_usage_operation(record, response_time_ms, now_ms, None), True)

    def log_usage_many(
        self, entries: list[tuple[UsageRecord, int | None]], now_ms: int
    ) -> list[LogOutcome | LedgerError]:
        """One write transaction for the whole list, each record in a savepoint of its own: a
        batch costs one commit (one fsync) instead of one per record."""
        operations = [_log_usage_operation(record, ms, now_ms, None) for record, ms in entries]

        def operation(connection: sqlite3.Connection, batch_ms: int) -> list:
            outcomes: list[LogOutcome | LedgerError] = []
            for one in operations:
                connection.execute("SAVEPOINT record")
                try:
                    outcomes.append(one(connection, batch_ms))
                except LedgerError as refused:
                    connection.execute("ROLLBACK TO record")
                    outcomes.append(refused.with_traceback(None))
                connection.execute("RELEASE record")
            return outcomes

        return self._write(operation)

    def backfill_usage(self, record: UsageRecord, source: str, now_ms: int) -> bool:
        operation = _log_usage_operation(record, None, now_ms, source)
        return self._write(operation).created

    def release(self, request_id: str, now_ms: int) -> Reservation:
        def operation(connection: sqlite3.Connection, _: int) -> Reservation:
            reservation, _logged = _read_request(connection, request_id)
            if reservation is None:
                raise NotFound("no reservation with this request_id", request_id=request_id)
            if check_release(reservation):
                connection.execute(
                    "UPDATE reservations SET state = 'released', closed_at = ?"
                    " WHERE request_id = ?",
                    (now_ms, request_id),
                )
            return reservation

        return self._write(operation, one_statement=True)

    def start_reset(self, request: ResetRequest, now_ms: int) -> ResetOutcome | ResetRun:
        def operation(connection: sqlite3.Connection, _: int) -> ResetOutcome | ResetRun:
            unfinished = connection.execute(ledger_sql.UNFINISHED_RESET_SQL).fetchone()
            if unfinished is not None:
                run = {"run_id": unfinished[0]}
                connection.execute(ledger_sql.ENSURE_RESET_LANE_SQL, run)
                (lanes,) = connection.execute(ledger_sql.COUNT_RESET_LANES_SQL, run).fetchone()
                return ledger_sql.unfinished_run(unfinished, lanes, request)
            label = request.label
            if request.apply_once:
                done = connection.execute(ledger_sql.APPLIED_RESET_SQL, {"label": label})
                if done.fetchone() is not None:
                    return ResetOutcome(label, 0, True)
            # Two lookups in users_by_period_label (one query with both would scan the table).
            earliest, latest = connection.execute(
                "SELECT (SELECT MIN(period_label) FROM users),"
                " (SELECT MAX(period_label) FROM users)"
            ).fetchone()
            refusal = reset_refusal(request, OpenPeriods(earliest, latest))
            if refusal is not None:
                raise refusal
            parameters = ledger_sql.reset_run_params(request, now_ms)
            (run_id,) = connection.execute(ledger_sql.INSERT_RESET_RUN_SQL, parameters).fetchone()
            # One lane, whatever lanes_max: SQLite has one writer, lanes would queue for it.
            lane_rows = ledger_sql.reset_lane_params(run_id, [])
            connection.executemany(ledger_sql.INSERT_RESET_LANE_SQL, lane_rows)
            return ResetRun(run_id, label, request.apply_once, True, len(lane_rows))

        return self._write(operation)

    def reset_batch(self, run_id: int, lane: int, users_max: int, now_ms: int) -> bool:
        assert lane >= 0 and users_max > 0

        def operation(connection: sqlite3.Connection, _: int) -> bool:
            return _reset_batch(connection, run_id, lane, users_max, now_ms)

        return self._write(operation)

    def finish_reset(self, run_id: int, now_ms: int) -> ResetOutcome | None:
        def operation(connection: sqlite3.Connection, _: int) -> ResetOutcome | None:
            return _finish_reset(connection, run_id, now_ms)

        return self._write(operation)

    def provision_user(self, user: NewUser, now_ms: int) -> UserView:
        parameters = ledger_sql.new_user_params(user, now_ms)

        def operation(connection: sqlite3.Connection, _: int) -> UserView:
            conflicts = connection.execute(ledger_sql.NEW_USER_CONFLICTS_SQL, parameters)
            ledger_sql.check_new_user(*conflicts.fetchone())
            connection.execute(ledger_sql.INSERT_TENANT_IF_NEW_SQL, parameters)
            connection.execute(ledger_sql.INSERT_USER_SQL, parameters)
            return _require_user(connection, user.id, now_ms)

        return self._write(operation)

    def put_product(self, product: Product, now_ms: int) -> bool:
        return self._put(ledger_sql.PRODUCT_EXISTS_SQL, ledger_sql.PUT_PRODUCT_SQL, product, now_ms)

    def put_tenant(self, tenant: Tenant, now_ms: int) -> bool:
        return self._put(ledger_sql.TENANT_EXISTS_SQL, ledger_sql.PUT_TENANT_SQL, tenant, now_ms)

    def _put(self, exists_sql: str, put_sql: str, plan: Product | Tenant, now_ms: int) -> bool:
        """Create or replace a product or a tenant; True when created."""
        parameters = ledger_sql.put_params(plan, now_ms)

        def operation(connection: sqlite3.Connection, _: int) -> bool:
            created = not connection.execute(exists_sql, parameters).fetchone()
            connection.execute(put_sql, parameters)
            return created

        return self._write(operation)

    def update_user(
        self, user_id: str, status: UserStatus | None, product_id: str | None, now_ms: int
    ) -> UserView:
        def operation(connection: sqlite3.Connection, _: int) -> UserView:
            _require_user(connection, user_id, now_ms)
            if product_id is not None:
                known = connection.execute(ledger_sql.PRODUCT_EXISTS_SQL, {"id": product_id})
                if not known.fetchone():
                    raise Invalid("unknown product", field="product_id")
                parameters = {"id": user_id, "product_id": product_id, "now": now_ms}
                connection.execute(ledger_sql.SET_USER_PRODUCT_SQL, parameters)
            if status is not None:
                parameters = {"id": user_id, "status": status.value, "now": now_ms}
                connection.execute(ledger_sql.SET_USER_STATUS_SQL, parameters)
            return _require_user(connection, user_id, now_ms)

        return self._write(operation)

    def grant_credit(self, grant: CreditGrant, now_ms: int) -> tuple[bool, UserView]:
        def operation(connection: sqlite3.Connection, _: int) -> tuple[bool, UserView]:
            view = _require_user(connection, grant.user_id, now_ms)
            parameters = ledger_sql.grant_params(grant, view.period_start_ms, now_ms)
            existing = connection.execute(ledger_sql.CREDIT_GRANT_SQL, parameters).fetchone()
            granted = None if existing is None else CreditGrant(*existing)
            if not check_grant(view.budget, granted, grant):
                return False, view
            connection.execute(ledger_sql.INSERT_CREDIT_GRANT_SQL, parameters)
            connection.execute(ledger_sql.ADD_CREDITS_SQL, parameters)
            return True, _require_user(connection, grant.user_id, now_ms)

        return self._write(operation)


def _log_usage_operation(
    record: UsageRecord, response_time_ms: int | None, now_ms: int, audit_source: str | None
) -> Callable[[sqlite3.Connection, int], LogOutcome]:
    """Append usage, settle its hold, record the alerts it raises; audited when backfilled."""

    def operation(connection: sqlite3.Connection, _: int) -> LogOutcome:
        view, reservation, logged = _require_user_and_request(
            connection, record.user_id, record.request_id, now_ms
        )
        outcome = check_log(view.budget, logged, reservation, record, now_ms)
        if not outcome.created:
            return outcome
        # The schema's usage_counts trigger counts the cost and settles the hold.
        connection.execute(
            "INSERT INTO usage (request_id, user_id, tenant_id, model, tokens_input,"
            " tokens_output, cost, response_time_ms, period_start, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.request_id,
                record.user_id,
                view.tenant_id,
                record.model,
                record.tokens_input,
                record.tokens_output,
                record.cost,
                response_time_ms,
                view.period_start_ms,
                now_ms,
            ),
        )
        # Alerts join the usage's transaction. They are rare, so the usual write stays one
        # statement; should an alert insert fail after the usage insert, the writer rolls the
        # whole batch back (``group_commit._run_one``), so nothing half-written is committed.
        found = crossings(view.budget, record.cost, record.user_id, view.tenant_id)
        if found:
            insert_alerts(connection, found, view.period_label, now_ms)
        if audit_source is not None:
            backfilled = Drift(Check.BACKFILL, record.request_id, 0, record.cost)
            record_repair(connection, backfilled, backfill_note(audit_source), now_ms)
        return outcome

    return operation


def _reset_batch(
    connection: sqlite3.Connection, run_id: int, lane: int, users_max: int, now_ms: int
) -> bool:
    """One batch of a lane of a reset's run, as PostgreSQL's ``ledger_reset_lane_batch``: True
    once the lane has no user left (the commit that finds none marks it finished)."""
    label, before, run_finished_at = connection.execute(
        "SELECT label, close_before, finished_at FROM reset_runs WHERE id = ?", (run_id,)
    ).fetchone()
    after, upto, finished = connection.execute(
        "SELECT users_after, users_upto, finished FROM reset_lanes WHERE run_id = ? AND lane = ?",
        (run_id, lane),
    ).fetchone()
    if run_finished_at is not None or finished:
        return True
    (last,) = connection.execute(
        "SELECT MAX(id) FROM (SELECT id FROM users WHERE id > ? AND (? IS NULL OR id <= ?)"
        " ORDER BY id LIMIT ?)",
        (after, upto, upto, users_max),
    ).fetchone()
    if last is None:
        connection.execute(
            "UPDATE reset_lanes SET finished = 1 WHERE run_id = ? AND lane = ?", (run_id, lane)
        )
        return True
    batch = {"after": after, "last": last, "before": before, "label": label, "now": now_ms}
    closing = " WHERE u.id > :after AND u.id <= :last AND u.period_label < :before"
    # What the closing periods held, per tenant, added here: SQLite's SUM fails past 2^63.
    closed_by_tenant: dict[str, int] = {}
    closing_users = connection.execute(f"SELECT u.tenant_id, u.used FROM users u{closing}", batch)
    for tenant_id, used in closing_users:
        closed_by_tenant[tenant_id] = closed_by_tenant.get(tenant_id, 0) + used
    # A period is named by its start; MAX(...) keeps starts strictly increasing even when two
    # resets fall in one millisecond, so usage rows never straddle two periods.
    connection.execute(
        "INSERT INTO period_history (user_id, label, period_start, period_end, tenant_id,"
        " product_id, plan_budget, credits, used, closed_by)"
        " SELECT u.id, u.period_label, u.period_start, MAX(:now, u.period_start + 1),"
        " u.tenant_id, u.product_id, p.monthly_budget, u.credits, u.used, :label"
        f" FROM users u JOIN products p ON p.id = u.product_id{closing}",
        batch,
    )
    # Lowered by what closed, never below 0: a drifted counter is reconciliation's to report,
    # not a reason to stop the reset. A tenant's used is at most COUNTER_MAX, so a larger
    # amount closed (possible only past a drift) lowers it to 0 all the same.
    connection.executemany(
        "UPDATE tenants SET used = MAX(used - ?, 0), updated_at = ? WHERE id = ?",
        [
            (min(closed, COUNTER_MAX), now_ms, tenant_id)
            for tenant_id, closed in sorted(closed_by_tenant.items())
        ],
    )
    closed = connection.execute(
        "UPDATE users AS u SET used = 0, credits = 0, period_label = :label,"
        f" period_start = MAX(:now, period_start + 1), updated_at = :now{closing}",
        batch,
    ).rowcount
    connection.execute(
        "UPDATE reset_lanes SET users_after = ?, users_reset = users_reset + ?"
        " WHERE run_id = ? AND lane = ?",
        (last, closed, run_id, lane),
    )
    return False


def _finish_reset(connection: sqlite3.Connection, run_id: int, now_ms: int) -> ResetOutcome | None:
    """The end of a run whose lanes are all finished, as PostgreSQL's ``ledger_reset_finish``:
    its outcome (None while a lane is not), the label applied and a forced run's notice in this
    commit."""
    label, apply_once, forced, users_reset, finished_at = connection.execute(
        "SELECT label, apply_once, forced, users_reset, finished_at FROM reset_runs WHERE id = ?",
        (run_id,),
    ).fetchone()
    if finished_at is not None:
        return ResetOutcome(label, users_reset, False)
    lanes, unfinished, lanes_reset = connection.execute(
        "SELECT COUNT(*), COUNT(*) - SUM(finished), SUM(users_reset) FROM reset_lanes"
        " WHERE run_id = ?",
        (run_id,),
    ).fetchone()
    if lanes == 0 or unfinished:
        return None
    users_reset += lanes_reset
    connection.execute(
        "UPDATE reset_runs SET finished_at = ?, users_reset = ? WHERE id = ?",
        (now_ms, users_reset, run_id),
    )
    if apply_once:
        connection.execute(
            "INSERT INTO applied_resets (label, users_reset, applied_at) VALUES (?, ?, ?)",
            (label, users_reset, now_ms),
        )
    if forced:
        notice = forced_reset_notice(label, users_reset)
        parameters = {"subject": notice.subject, "body": notice.body, "now": now_ms}
        connection.execute(ledger_sql.INSERT_ADMIN_NOTICE_SQL, parameters)
    return ResetOutcome(label, users_reset, False)


def _read_user(connection: sqlite3.Connection, user_id: str, now_ms: int) -> UserView | None:
    row = connection.execute(_USER_VIEW_SQL, {"user_id": user_id, "now": now_ms}).fetchone()
    return None if row is None else user_view_from_row(row)


def _require_user(connection: sqlite3.Connection, user_id: str, now_ms: int) -> UserView:
    view = _read_user(connection, user_id, now_ms)
    if view is None:
        raise _unknown_user(user_id)
    return view


def _unknown_user(user_id: str) -> NotFound:
    return NotFound("unknown user", user_id=user_id)


def _read_request(
    connection: sqlite3.Connection, request_id: str
) -> tuple[Reservation | None, UsageRecord | None]:
    """The hold and the usage already recorded under ``request_id``, in one query."""
    row = connection.execute(_REQUEST_SQL, {"request_id": request_id}).fetchone()
    return request_from_row(request_id, row)


def _require_user_and_request(
    connection: sqlite3.Connection, user_id: str, request_id: str, now_ms: int
) -> tuple[UserView, Reservation | None, UsageRecord | None]:
    """``_require_user`` and ``_read_request`` in one query: the user first (unknown: 404)."""
    parameters = {"user_id": user_id, "request_id": request_id, "now": now_ms}
    row = connection.execute(_USER_AND_REQUEST_SQL, parameters).fetchone()
    if row is None:
        raise _unknown_user(user_id)
    split = len(USER_VIEW_COLUMNS)
    return (user_view_from_row(row[:split]), *request_from_row(request_id, row[split:]))


def _sweep_expired(connection: sqlite3.Connection, now_ms: int) -> None:
    """Mark holds past their expiry ``expired``; the schema's triggers update the counters."""
    connection.execute(
        "UPDATE reservations SET state = 'expired', closed_at = :now WHERE request_id IN"
        " (SELECT request_id FROM reservations WHERE state = 'open' AND expires_at <= :now"
        " LIMIT :limit)",
        {"now": now_ms, "limit": SWEEP_BATCH_MAX},
    )


def _any_hold_expired(connection: sqlite3.Connection, now_ms: int) -> bool:
    """A cheap read (the partial index's first entry) so an idle writer takes no lock."""
    earliest = connection.execute(
        "SELECT MIN(expires_at) FROM reservations WHERE state = 'open'"
    ).fetchone()[0]
    return earliest is not None and earliest <= now_ms
