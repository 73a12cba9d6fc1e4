"""The group-commit writer on a table of its own: it knows only operations in a write
transaction. A batch commits together, a refused write in it leaves no trace, and the periodic
operation runs first in a batch when it is due."""

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.errors import Invalid, LedgerError, Unavailable
from core.store.group_commit import GroupCommitWriter, ProcessWriteLock

THREADS = 12
JOIN_SECONDS = 30
PERIODIC_INTERVAL_MS = 1_000


class Clock:
    def __init__(self) -> None:
        self.now_ms = 1_000_000

    def __call__(self) -> int:
        return self.now_ms


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "w.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE facts (name TEXT PRIMARY KEY, at INTEGER NOT NULL)")
        connection.execute("CREATE TABLE rounds (at INTEGER NOT NULL)")
    return path


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def writer(db: Path, clock: Clock) -> Iterator[GroupCommitWriter]:
    def periodic(connection: sqlite3.Connection, now_ms: int) -> None:
        connection.execute("INSERT INTO rounds (at) VALUES (?)", (now_ms,))

    opened = GroupCommitWriter(
        sqlite3.connect(db, isolation_level=None, check_same_thread=False),
        ProcessWriteLock(db.with_name("w.db-writelock")),
        clock,
        logging.getLogger(__name__),
        busy_timeout_ms=1_000,
        periodic=periodic,
        periodic_interval_ms=PERIODIC_INTERVAL_MS,
    )
    try:
        yield opened
    finally:
        opened.close()


def names(db: Path) -> list[str]:
    with sqlite3.connect(db) as connection:
        return [row[0] for row in connection.execute("SELECT name FROM facts ORDER BY name")]


def insert(name: str):
    def operation(connection: sqlite3.Connection, now_ms: int) -> str:
        connection.execute("INSERT INTO facts (name, at) VALUES (?, ?)", (name, now_ms))
        return name

    return operation


def test_writes_queued_behind_a_batch_commit_together_and_a_refused_one_leaves_no_trace(
    writer: GroupCommitWriter, db: Path
):
    """The first write holds its batch open while the others queue; they then run as one
    batch, where the writes that insert and then refuse are rolled back to their savepoints."""
    running, go_on = threading.Event(), threading.Event()

    def first(connection: sqlite3.Connection, now_ms: int) -> str:
        running.set()
        assert go_on.wait(JOIN_SECONDS)
        return insert("first")(connection, now_ms)

    def refused(name: str):
        def operation(connection: sqlite3.Connection, now_ms: int) -> None:
            insert(name)(connection, now_ms)
            raise Invalid("refused", field=name)

        return operation

    outcomes: dict[str, object] = {}

    def run(name: str, operation, one_statement: bool = False) -> None:
        try:
            outcomes[name] = writer.write(operation, one_statement)
        except LedgerError as error:
            outcomes[name] = error

    leader = threading.Thread(target=run, args=("first", first))
    leader.start()
    assert running.wait(JOIN_SECONDS)
    followers = [
        threading.Thread(
            target=run, args=(f"w{n:02}", refused(f"w{n:02}") if n % 3 == 0 else insert(f"w{n:02}"))
        )
        for n in range(THREADS)
    ]
    # The first write's name again: refused by the table's own key.
    followers.append(threading.Thread(target=run, args=("again", insert("first"), True)))
    for thread in followers:
        thread.start()
    deadline = time.monotonic() + JOIN_SECONDS
    while len(writer._pending) < len(followers):  # ordering only: all queued behind the first
        assert time.monotonic() < deadline
        time.sleep(0.001)
    go_on.set()
    for thread in [leader, *followers]:
        thread.join(JOIN_SECONDS)
    kept = sorted(f"w{n:02}" for n in range(THREADS) if n % 3 != 0)
    assert names(db) == ["first", *kept]
    assert all(outcomes[name] == name for name in kept)
    assert all(isinstance(outcomes[f"w{n:02}"], Invalid) for n in range(0, THREADS, 3))
    assert isinstance(outcomes["again"], Unavailable)


def test_the_periodic_operation_runs_first_in_a_batch_at_most_once_an_interval(
    writer: GroupCommitWriter, db: Path, clock: Clock
):
    writer.write(insert("a"))
    writer.write(insert("b"))
    clock.now_ms += PERIODIC_INTERVAL_MS
    writer.write(insert("c"))
    with sqlite3.connect(db) as connection:
        rounds = [row[0] for row in connection.execute("SELECT at FROM rounds ORDER BY at")]
    assert rounds == [1_000_000, 1_000_000 + PERIODIC_INTERVAL_MS]
    assert names(db) == ["a", "b", "c"]
    assert writer.writes_committed == 3


def test_a_thread_waiting_for_a_count_of_writes_wakes_at_the_commit_that_reaches_it(
    writer: GroupCommitWriter,
):
    """The housekeeper's sleep: woken by the write that reaches the count, not before; at once
    when the count is already reached; not at all when no write comes (it times out); and by
    ``interrupt_wait``."""
    writer.write(insert("a"))
    assert writer.wait_for_writes(1, 0.0)
    woken: list[bool] = []
    waiter = threading.Thread(target=lambda: woken.append(writer.wait_for_writes(3, JOIN_SECONDS)))
    waiter.start()
    writer.write(insert("b"))
    waiter.join(0.2)
    assert waiter.is_alive() and not woken, "woken before the count was reached"
    writer.write(insert("c"))
    waiter.join(JOIN_SECONDS)
    assert woken == [True]
    assert writer.writes_committed == 3
    assert not writer.wait_for_writes(4, 0.05)
    interrupted: list[bool] = []
    waiter = threading.Thread(
        target=lambda: interrupted.append(writer.wait_for_writes(4, JOIN_SECONDS))
    )
    waiter.start()
    writer.interrupt_wait()
    waiter.join(JOIN_SECONDS)
    assert interrupted == [True]
    assert writer.wait_for_writes(5, JOIN_SECONDS)
