"""A durable local spool of usage records the billing service has not accepted yet.

One SQLite file (WAL, ``synchronous=FULL``): a record is on disk before ``put`` returns, so a
proxy crash or restart loses nothing. The spool holds at most ``records_max`` records; a record
the service refused for good (404, 409, 4xx) stays in the file, marked rejected, for an operator.
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
        self._count = self._db.execute("SELECT count(*) FROM usage_spool").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def count(self) -> int:
        """Records in the file, pending and rejected."""
        return self._count

    def full(self) -> bool:
        return self._count >= self.records_max

    def put(self, record: UsageRecord, rejected: str | None = None) -> None:
        """Write ``record`` durably; a second record with the same request_id is ignored."""
        with self._lock:
            if self._count >= self.records_max:
                raise SpoolFull(f"{self.path} holds {self._count} records (records_max)")
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO usage_spool VALUES (?, ?, ?, ?)",
                (record.request_id, json.dumps(asdict(record)), _now_ms(), rejected),
            )
            self._count += cursor.rowcount

    def pending(self, limit: int) -> list[UsageRecord]:
        """The oldest records not yet accepted nor rejected."""
        assert 1 <= limit <= BATCH_MAX_LIMIT, limit
        with self._lock:
            rows = self._db.execute(
                "SELECT record FROM usage_spool WHERE rejected IS NULL"
                " ORDER BY spooled_at_ms, request_id LIMIT ?",
                (limit,),
            ).fetchall()
        return [UsageRecord(**json.loads(row[0])) for row in rows]

    def remove(self, request_id: str) -> None:
        with self._lock:
            cursor = self._db.execute("DELETE FROM usage_spool WHERE request_id = ?", (request_id,))
            self._count -= cursor.rowcount

    def reject(self, request_id: str, reason: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE usage_spool SET rejected = ? WHERE request_id = ?", (reason, request_id)
            )


class SpoolForwarder:
    """A daemon thread that re-sends pending records every ``retry_seconds`` until accepted."""

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
                log.error("billing spool: usage %s rejected: %s", record.request_id, reason)
                self._spool.reject(record.request_id, reason)
                continue
            self._spool.remove(record.request_id)
            delivered += 1
        if delivered:
            log.info("billing spool: delivered %d usage records", delivered)
        return delivered


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
