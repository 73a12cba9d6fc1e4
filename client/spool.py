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
from typing import Literal

from client import calls
from client.errors import BillingError, Unauthorized, Unavailable
from client.sync import BillingClient
from wire.schemas import LOG_USAGE_BATCH_RECORDS_MAX

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

    def body(self) -> dict:
        """The record as one entry of ``POST /api/log-usage/batch``."""
        return calls.log_usage(**asdict(self)).body


def batch_outcome(status: int) -> Literal["taken", "retry", "refused"]:
    """What a record's status in a batch answer means to its sender: ``taken`` (201 created, 200
    an identical replay), ``retry`` (429 or 5xx: the service is busy or failing), or
    ``refused`` (any other 4xx: sending it again cannot change the answer)."""
    if status in (200, 201):
        return "taken"
    if status == 429 or status >= 500:
        return "retry"
    return "refused"


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
        self.remove_many([record])

    def remove_many(self, records: list[SpooledRecord]) -> None:
        """Forget records the service took, in one transaction (one fsync)."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            for record in records:
                table = "release_spool" if isinstance(record, ReleaseRecord) else "usage_spool"
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
    """A daemon thread that re-sends pending records until taken: round after round while each
    takes a full ``batch_max``, then every ``retry_seconds``. At one round of ``batch_max`` every
    ``retry_seconds`` (the defaults: 100 every 5 s), 100,000 records spooled through an outage
    took 83 minutes to drain."""

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
                delivered = self.forward_once()
            except Exception:  # the thread must outlive any one bad round
                log.exception("billing spool: forwarding round failed")
                delivered = 0
            if delivered < self._batch_max:
                self._stopping.wait(self._retry_seconds)

    def forward_once(self) -> int:
        """Send up to ``batch_max`` pending records, usage in batches and then releases one by
        one; stop at the first sign of an outage. A release goes only once every usage record
        before it was taken (``UsageSpool.pending``). Returns the records taken."""
        records = self._spool.pending(self._batch_max)
        usage = [record for record in records if isinstance(record, UsageRecord)]
        releases = [record for record in records if isinstance(record, ReleaseRecord)]
        delivered = 0
        try:
            for start in range(0, len(usage), LOG_USAGE_BATCH_RECORDS_MAX):
                chunk = usage[start : start + LOG_USAGE_BATCH_RECORDS_MAX]
                taken, waiting = self._send_usage(chunk)
                delivered += taken
                if waiting:
                    return delivered
            for release in releases:
                delivered += self._send_one(release)
        except (Unavailable, Unauthorized) as error:
            log.warning("billing spool: %d records wait: %s", self._spool.count(), error)
            return delivered
        finally:
            if delivered:
                log.info("billing spool: delivered %d records", delivered)
        return delivered

    def _send_usage(self, chunk: list[UsageRecord]) -> tuple[int, bool]:
        """One batch: (records taken, whether some wait for a later round)."""
        if len(chunk) == 1:
            return self._send_one(chunk[0]), False
        try:
            answer = self._client.run(calls.log_usage_batch([record.body() for record in chunk]))
        except (Unavailable, Unauthorized):
            raise
        except BillingError:
            # The batch as a whole was refused (a record the schema refuses): one by one, so
            # only that record is set aside.
            return sum(self._send_one(record) for record in chunk), False
        taken: list[SpooledRecord] = []
        waiting = False
        for record, result in zip(chunk, answer.results, strict=True):
            outcome = batch_outcome(result.status)
            if outcome == "taken":
                taken.append(record)
            elif outcome == "retry":
                waiting = True
            else:
                reason = f"{result.status} {result.error}: {result.message}"
                log.error("billing spool: usage %s rejected: %s", record.request_id, reason)
                self._spool.reject(record, reason)
        self._spool.remove_many(taken)
        return len(taken), waiting

    def _send_one(self, record: SpooledRecord) -> int:
        """1 when the service took ``record``, 0 when it refused it for good."""
        try:
            record.send(self._client)
        except (Unavailable, Unauthorized):
            raise
        except BillingError as error:
            reason = f"{error.status} {error.code}: {error.message}"
            if isinstance(record, ReleaseRecord):
                # No such hold any more (404), or it was settled (409): nothing to release.
                log.info("billing spool: release %s refused: %s", record.request_id, reason)
                self._spool.remove(record)
            else:
                log.error("billing spool: usage %s rejected: %s", record.request_id, reason)
                self._spool.reject(record, reason)
            return 0
        self._spool.remove(record)
        return 1


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
