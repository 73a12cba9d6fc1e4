"""A durable local spool of the usage records and hold releases the billing service has not
taken yet.

One SQLite file (WAL, ``synchronous=FULL``): a record is on disk before ``put`` (or
``put_release``) returns, so a proxy crash or restart loses nothing. The spool holds at most
``records_max`` records of both kinds; a usage record the service refused for good (404, 409,
any other 4xx, such as 422 ``amount_out_of_range`` for a cost past a bound) is never sent
again: it stays in the file, marked rejected, for an operator, and is logged once. A release
the service refuses has nothing left to do (no such hold, or it was settled) and is dropped.
"""

import json
import logging
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from client.errors import BillingError, Unauthorized, Unavailable
from client.sync import BillingClient

log = logging.getLogger(__name__)

RECORDS_MAX_LIMIT = 10_000_000
BATCH_MAX_LIMIT = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage_spool (
    request_id TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    spooled_at_ms INTEGER NOT NULL,
    rejected TEXT
)
"""
# A table of its own, so spool files written before releases were spooled need no migration.
_RELEASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS release_spool (
    request_id TEXT PRIMARY KEY,
    spooled_at_ms INTEGER NOT NULL
)
"""


@dataclass(frozen=True)
class UsageRecord:
    """One log-usage call; ``cost_total`` is a decimal string (never a float)."""

    user_id: str
    model: str
    request_id: str
    tokens_input: int
    tokens_output: int
    cost_total: str | None
    response_time_ms: int | None

    def send(self, client: BillingClient) -> None:
        client.log_usage(**asdict(self))


@dataclass(frozen=True)
class ReleaseRecord:
    """One release-reservation call: the hold of a failed LLM call."""

    request_id: str

    def send(self, client: BillingClient) -> None:
        client.release_reservation(self.request_id)


SpooledRecord = UsageRecord | ReleaseRecord


class SpoolFull(Exception):
    """The spool already holds ``records_max`` records; the record was not written."""


class UsageSpool:
    """Thread-safe; every method is one short SQLite transaction."""

    def __init__(self, path: Path, records_max: int) -> None:
        assert 1 <= records_max <= RECORDS_MAX_LIMIT, records_max
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.records_max = records_max
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        self._db.execute(_RELEASE_SCHEMA)
        self._count = self._db.execute(
            "SELECT (SELECT count(*) FROM usage_spool) + (SELECT count(*) FROM release_spool)"
        ).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def count(self) -> int:
        """Records in the file: usage pending and rejected, and releases."""
        return self._count

    def full(self) -> bool:
        return self._count >= self.records_max

    def put(self, record: UsageRecord, rejected: str | None = None) -> None:
        """Write ``record`` durably; a second record with the same request_id is ignored."""
        self._insert(
            "INSERT OR IGNORE INTO usage_spool VALUES (?, ?, ?, ?)",
            (record.request_id, json.dumps(asdict(record)), _now_ms(), rejected),
        )

    def put_many(self, records: list[UsageRecord], rejected: str | None = None) -> None:
        """``put`` of every record in one transaction (one fsync); all or none are written."""
        now_ms = _now_ms()
        rows = [
            (record.request_id, json.dumps(asdict(record)), now_ms, rejected) for record in records
        ]
        with self._lock:
            if self._count + len(rows) > self.records_max:
                raise SpoolFull(f"{self.path} holds {self._count} records (records_max)")
            with self._db:
                self._db.execute("BEGIN")
                before = self._db.total_changes
                self._db.executemany("INSERT OR IGNORE INTO usage_spool VALUES (?, ?, ?, ?)", rows)
                self._count += self._db.total_changes - before

    def put_release(self, request_id: str) -> None:
        """Write a release of ``request_id``'s hold durably; a second one is ignored."""
        self._insert("INSERT OR IGNORE INTO release_spool VALUES (?, ?)", (request_id, _now_ms()))

    def _insert(self, statement: str, row: tuple) -> None:
        with self._lock:
            if self._count >= self.records_max:
                raise SpoolFull(f"{self.path} holds {self._count} records (records_max)")
            self._count += self._db.execute(statement, row).rowcount

    def pending(self, limit: int) -> list[SpooledRecord]:
        """The records not yet taken nor rejected: usage first, then releases, oldest first.

        A release frees budget, so it goes only after every usage spooled before it has been
        taken (the release of a lease comes after the usage of the calls it admitted)."""
        assert 1 <= limit <= BATCH_MAX_LIMIT, limit
        with self._lock:
            rows = self._db.execute(
                "SELECT record, 0 AS kind, spooled_at_ms, request_id FROM usage_spool"
                " WHERE rejected IS NULL"
                " UNION ALL SELECT NULL, 1, spooled_at_ms, request_id FROM release_spool"
                " ORDER BY kind, spooled_at_ms, request_id LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            ReleaseRecord(request_id) if record is None else UsageRecord(**json.loads(record))
            for record, _, _, request_id in rows
        ]

    def remove(self, record: SpooledRecord) -> None:
        table = "release_spool" if isinstance(record, ReleaseRecord) else "usage_spool"
        with self._lock:
            cursor = self._db.execute(
                f"DELETE FROM {table} WHERE request_id = ?", (record.request_id,)
            )
            self._count -= cursor.rowcount

    def reject(self, record: UsageRecord, reason: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE usage_spool SET rejected = ? WHERE request_id = ?",
                (reason, record.request_id),
            )


class SpoolForwarder:
    """A daemon thread that re-sends pending records every ``retry_seconds`` until taken."""

    def __init__(
        self, spool: UsageSpool, client: BillingClient, retry_seconds: float, batch_max: int
    ) -> None:
        assert 0 < retry_seconds <= 3600, retry_seconds
        assert 1 <= batch_max <= BATCH_MAX_LIMIT, batch_max
        self._spool = spool
        self._client = client
        self._retry_seconds = retry_seconds
        self._batch_max = batch_max
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="billing-spool", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.forward_once()
            except Exception:  # the thread must outlive any one bad round
                log.exception("billing spool: forwarding round failed")
            self._stopping.wait(self._retry_seconds)

    def forward_once(self) -> int:
        """Send up to ``batch_max`` pending records; stop at the first sign of an outage."""
        delivered = 0
        for record in self._spool.pending(self._batch_max):
            try:
                record.send(self._client)
            except (Unavailable, Unauthorized) as error:
                log.warning("billing spool: %d records wait: %s", self._spool.count(), error)
                return delivered
            except BillingError as error:
                reason = f"{error.status} {error.code}: {error.message}"
                if isinstance(record, ReleaseRecord):
                    # No such hold any more (404), or it was settled (409): nothing to release.
                    log.info("billing spool: release %s refused: %s", record.request_id, reason)
                    self._spool.remove(record)
                else:
                    log.error("billing spool: usage %s rejected: %s", record.request_id, reason)
                    self._spool.reject(record, reason)
                continue
            self._spool.remove(record)
            delivered += 1
        if delivered:
            log.info("billing spool: delivered %d records", delivered)
        return delivered


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
