"""Group commit on one SQLite connection: writes of many threads, committed in batches.

The writer knows only "run this operation in a write transaction". The first waiting thread
leads: it runs a batch in one ``BEGIN IMMEDIATE`` transaction, each write in its own savepoint,
and commits once; a write is acknowledged only after that commit. Serialising writers in the
process keeps them out of SQLite's busy handler (which pushed p99 latency to a second in a
trial); between processes sharing the file, leaders take turns on an ``flock`` of a file beside
it for the same reason, and ``BEGIN IMMEDIATE`` still guards.
"""

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from core.errors import LedgerError, Unavailable
from core.failure_log import FailureLog
from core.store.base import WriteFailures

T = TypeVar("T")

# An operation runs inside the batch's transaction and gets the batch's clock reading (ms).
Operation = Callable[[sqlite3.Connection, int], T]

WRITE_QUEUE_MAX = 4_096
WRITE_BATCH_MAX = 256
WRITE_WAIT_SECONDS_MAX = 60.0
# How often a writer retries the lock another process's writer holds (see ProcessWriteLock).
PROCESS_LOCK_POLL_SECONDS = 0.0002


class _PendingWrite:
    """A write waiting for its commit; its thread is woken once: when it is done or is to lead.

    The wake-up is a lock held from birth and released once: cheaper than an ``Event``, whose
    condition variable builds a lock for every wait.
    """

    __slots__ = (
        "operation", "one_statement", "queued", "lead", "done", "result", "error", "_gate",
        "_woken",
    )  # fmt: skip

    def __init__(self, operation: Operation[object], one_statement: bool) -> None:
        self.operation = operation
        self.one_statement = one_statement
        self.queued = True
        self.lead = False
        self.done = False
        self.result: object = None
        self.error: BaseException | None = None
        self._gate = threading.Lock()
        self._gate.acquire()
        self._woken = False

    def wake(self) -> None:
        """Let the waiting thread go; later calls do nothing.

        Only one thread wakes a write at a time: the one that makes it leader (under the
        writer's lock, while it is queued) or the leader that ran its batch (after it left the
        queue), and a leader settling its own write was woken before, in its thread.
        """
        if not self._woken:
            self._woken = True
            self._gate.release()

    def wait(self, timeout_seconds: float = -1) -> bool:
        """True once woken; False after ``timeout_seconds`` (no timeout: -1)."""
        return self._gate.acquire(timeout=timeout_seconds)


class ProcessWriteLock:
    """An ``flock`` on a file beside the database, held by a process around each write batch.

    It only schedules writers; SQLite's own lock (``BEGIN IMMEDIATE``) still decides. Without it
    two processes writing to one file meet in SQLite's busy handler, which retries after sleeps
    of 1, 2, 5, 10 … 100 ms: the one that lost a few times waited hundreds of milliseconds
    (write p99 210–650 ms at 32 connections with two workers). Here the loser retries every
    ``PROCESS_LOCK_POLL_SECONDS``, for at most the busy timeout.
    """

    def __init__(self, path: Path) -> None:
        # Read-only and world-readable: flock needs no write access, so a process of another
        # user that may write the database (a migration run as another account) can open it too.
        self._fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def acquire(self, timeout_ms: int) -> bool:
        """True once held; False after ``timeout_ms``, or at once when the writer is closed."""
        if self._fd < 0:
            return False
        deadline = time.monotonic() + timeout_ms / 1000
        for _ in range(int(timeout_ms / 1000 / PROCESS_LOCK_POLL_SECONDS) + 1):
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(PROCESS_LOCK_POLL_SECONDS)
        return False

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Idempotent, like closing the writer."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class GroupCommitWriter:
    """Runs operations in write transactions on ``connection``, which it owns from now on.

    ``periodic`` runs at the start of a batch's transaction, before its writes, when
    ``periodic_interval_ms`` have passed since it last did. ``writes_committed`` counts the
    writes of committed batches; a housekeeper sleeps in ``wait_for_writes`` until it reaches a
    count, woken by the commit that reaches it and by no other. Failed batches are logged to
    ``log`` as ``FailureLog`` lines; ``write_failures`` remembers the last for a health check.
    """

    def __init__(
        self,
        connection: sqlite3.Connection,
        process_lock: ProcessWriteLock,
        clock_ms: Callable[[], int],
        log: logging.Logger,
        *,
        busy_timeout_ms: int,
        wait_seconds_max: float = WRITE_WAIT_SECONDS_MAX,
        queue_max: int = WRITE_QUEUE_MAX,
        periodic: Operation[None],
        periodic_interval_ms: int,
    ) -> None:
        assert busy_timeout_ms > 0 and wait_seconds_max > 0 and queue_max > 0
        self._connection = connection
        self._process_lock = process_lock
        self._clock_ms = clock_ms
        self._log = log
        self._busy_timeout_ms = busy_timeout_ms
        self._wait_seconds_max = wait_seconds_max
        self._queue_max = queue_max
        self._periodic = periodic
        self._periodic_interval_ms = periodic_interval_ms
        self._last_periodic_ms = 0
        self._pending: deque[_PendingWrite] = deque()
        self._lock = threading.Lock()
        self._leader_active = False
        self._failed_batches = FailureLog(log, "sqlite write batch failed, nothing written")
        self.write_failures = WriteFailures(clock_ms)
        self.writes_committed = 0
        self._writes_wanted = 0
        self._writes_reached = threading.Event()
        self._wait_interrupted = False

    def report_due(self) -> None:
        """Log the failed batches counted since their last line (``FailureLog.report_due``)."""
        self._failed_batches.report_due()

    def wait_for_writes(self, count: int, timeout_seconds: float) -> bool:
        """Sleep until ``writes_committed`` reaches ``count`` (True), ``interrupt_wait`` has been
        called (True, from then on), or ``timeout_seconds`` pass (False). For one waiting thread
        at a time.

        The wanted count is set before the event is cleared and the count read after: a commit
        that reaches it sets the event, or is seen by the read, so no wake is lost; a commit
        that read the wanted count before it changed may wake the waiter early, once."""
        self._writes_wanted = count
        self._writes_reached.clear()
        if self.writes_committed >= count or self._wait_interrupted:
            return True
        return self._writes_reached.wait(timeout_seconds)

    def interrupt_wait(self) -> None:
        """End every wait in ``wait_for_writes``, now and later (the store closes)."""
        self._wait_interrupted = True
        self._writes_reached.set()

    def close(self) -> None:
        """Close the connection and the lock once no batch runs, waiting for one at most
        ``wait_seconds_max``."""
        for _ in range(int(self._wait_seconds_max * 100)):
            with self._lock:
                if not self._leader_active:
                    self._connection.close()
                    self._process_lock.close()
                    break
            time.sleep(0.01)

    def write(self, operation: Operation[T], one_statement: bool = False) -> T:
        """Queue a write and return once it is committed (group commit, leader/followers).

        ``one_statement``: the operation modifies the database in at most one statement, so it
        needs no savepoint (``_run_one``). The thread that finds no leader leads: it commits
        queued writes in batches until its own is done, then passes the lead to the oldest
        queued write's thread. Each waiting thread is woken alone, when its write is done or it
        is to lead. A write still queued after ``wait_seconds_max`` is withdrawn, unwritten,
        and refused as unavailable.
        """
        pending = _PendingWrite(operation, one_statement)
        with self._lock:
            if len(self._pending) >= self._queue_max:
                raise Unavailable("write queue is full; retry shortly")
            self._pending.append(pending)
            if not self._leader_active:
                self._leader_active = True
                pending.lead = True
                pending.wake()
        if not pending.wait(self._wait_seconds_max):
            with self._lock:
                if pending.queued and not pending.lead:
                    self._pending.remove(pending)
                    raise Unavailable("database is busy; nothing was written, retry shortly")
            pending.wait()  # its batch is running, or it was just made leader
        if not pending.done:
            assert pending.lead
            self._lead(pending)
        assert pending.done
        if pending.error is not None:
            try:
                raise pending.error
            finally:
                del pending  # else error → its traceback → this frame → pending → error
        return pending.result  # type: ignore[return-value]

    def _lead(self, own: _PendingWrite) -> None:
        try:
            for _ in range(self._queue_max):
                if own.done:
                    break
                with self._lock:
                    taken = min(len(self._pending), WRITE_BATCH_MAX)
                    batch = [self._pending.popleft() for _ in range(taken)]
                    for pending in batch:
                        pending.queued = False
                assert batch, "the leader's own write is queued until it is done"
                self._run_batch(batch)
        finally:
            with self._lock:
                if self._pending:
                    successor = self._pending[0]
                    successor.lead = True
                    successor.wake()
                else:
                    self._leader_active = False

    def _run_batch(self, batch: list[_PendingWrite]) -> None:
        """One transaction for the whole batch; each write acknowledged only after COMMIT."""
        if not self._process_lock.acquire(self._busy_timeout_ms):
            self._failed_batches.failed(
                "write lock held elsewhere past the busy timeout, or the store closed"
            )
            _finish(batch, Unavailable("database is busy; nothing was written"))
            return
        try:
            self._run_batch_locked(batch)
        finally:
            self._process_lock.release()

    def _run_batch_locked(self, batch: list[_PendingWrite]) -> None:
        connection = self._connection
        now_ms = self._clock_ms()
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            self._failed_batches.failed(f"could not begin a transaction: {error}")
            _finish(batch, Unavailable("database is busy; nothing was written"))
            return
        try:
            if now_ms - self._last_periodic_ms >= self._periodic_interval_ms:
                self._periodic(connection, now_ms)
                self._last_periodic_ms = now_ms
            log = self._log
            for pending in batch:
                _run_one(connection, pending, now_ms, log)
            connection.execute("COMMIT")
            self.write_failures.succeeded()
            self.writes_committed += len(batch)  # one leader at a time writes it
            reached = self.writes_committed >= self._writes_wanted
            if reached and not self._writes_reached.is_set():  # a read, mostly: set takes a lock
                self._writes_reached.set()
        except BaseException as error:
            # A database's refusal (a full disk) is a line with a count; anything else is a bug,
            # and its line carries the traceback.
            bug = None if isinstance(error, sqlite3.Error) else error
            self._failed_batches.failed(f"{type(error).__name__}: {error}", error=bug)
            self.write_failures.failed(str(error))
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            _finish(batch, Unavailable("database write failed; nothing was written"))
            if not isinstance(error, Exception):
                raise
            return
        _finish(batch, None)


def _run_one(
    connection: sqlite3.Connection, pending: _PendingWrite, now_ms: int, log: logging.Logger
) -> None:
    """Run one write in the batch; a refused write leaves no trace.

    A write of at most one modifying statement needs no savepoint: SQLite undoes a failed
    statement, triggers included. Any other write runs in a savepoint of its own.
    """
    savepoint = not pending.one_statement
    if savepoint:
        connection.execute("SAVEPOINT write")
    changes_before = connection.total_changes
    try:
        pending.result = pending.operation(connection, now_ms)
    except (LedgerError, sqlite3.IntegrityError) as error:
        if savepoint:
            connection.execute("ROLLBACK TO write")
        elif connection.total_changes != changes_before:
            raise  # a one-statement write that wrote and then failed: roll the batch back
        if isinstance(error, sqlite3.IntegrityError):
            log.error("integrity check refused a write: %s", error)
            error = Unavailable("write refused by a database constraint")
        # Raised again in the write's own thread, which gives it a traceback of its own. Kept,
        # this one would hold this frame, and through ``pending`` itself: a cycle of ~50
        # objects per refused write, left for the cyclic collector.
        pending.error = error.with_traceback(None)
    if savepoint:
        connection.execute("RELEASE write")


def _finish(batch: list[_PendingWrite], error: LedgerError | None) -> None:
    """Settle each write of a batch and wake its thread; ``error`` fails them all."""
    for pending in batch:
        if error is not None:
            pending.result, pending.error = None, error
        pending.done = True
        pending.wake()
