"""Online backups of a SQLite ledger (``core.store.sqlite_backup``), on real files."""

import sqlite3
import threading
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from core_helpers import TTL_SECONDS, provision, usd

from core.accounts import Product
from core.errors import ConfigurationError
from core.ledger import Ledger
from core.prices import load_price_table
from core.store.sqlite import SqliteStore
from core.store.sqlite_backup import BackupFailed, backup_name, backup_sqlite, prune_backups

LOGS_BEFORE_BACKUP = 50
COST = usd("0.001")


def test_a_backup_taken_while_usage_is_logged_is_a_consistent_ledger(tmp_path, clock):
    source, target = tmp_path / "l.db", tmp_path / "backups" / "copy.db"
    store = SqliteStore(source, clock, "NORMAL")
    ledger = Ledger(store, load_price_table(), ZoneInfo("UTC"), TTL_SECONDS, clock_ms=clock)
    ledger.put_product(Product("basic", "Basic", usd(1000)))
    provision(ledger, "ann")
    provision(ledger, "bob")
    logged: list[str] = []
    enough, stop = threading.Event(), threading.Event()

    def log_until_stopped() -> None:
        for number in range(100_000):
            if stop.is_set():
                return
            user = ("ann", "bob")[number % 2]
            ledger.log_usage(user, "m", f"r{number}", 1, 1, COST, None)
            logged.append(user)
            if len(logged) == LOGS_BEFORE_BACKUP:
                enough.set()

    writer = threading.Thread(target=log_until_stopped)
    writer.start()
    try:
        assert enough.wait(timeout=30)
        made = backup_sqlite(source, target)
    finally:
        stop.set()
        writer.join(timeout=30)
        store.close()
    assert made.path == target and made.size_bytes == target.stat().st_size
    assert sorted(path.name for path in target.parent.iterdir()) == ["copy.db"]  # no WAL, no part
    with closing(sqlite3.connect(target)) as copy:
        rows = copy.execute("SELECT user_id, count(*), sum(cost) FROM usage GROUP BY 1").fetchall()
        used = dict(copy.execute("SELECT id, used FROM users").fetchall())
        assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    copied = sum(count for _, count, _ in rows)
    assert LOGS_BEFORE_BACKUP <= copied <= len(logged)
    assert {user: total for user, _, total in rows} == used  # counters match the rows copied


def test_an_existing_target_is_not_overwritten(tmp_path, clock):
    SqliteStore(tmp_path / "l.db", clock, "FULL").close()
    target = tmp_path / "copy.db"
    target.write_bytes(b"an earlier backup")
    with pytest.raises(ConfigurationError, match="exists; it is not overwritten"):
        backup_sqlite(tmp_path / "l.db", target)
    assert target.read_bytes() == b"an earlier backup"


def test_a_missing_database_is_refused_and_not_created(tmp_path):
    with pytest.raises(ConfigurationError, match="is not a database file"):
        backup_sqlite(tmp_path / "absent.db", tmp_path / "copy.db")
    assert sorted(tmp_path.iterdir()) == []


def test_a_copy_that_cannot_be_written_leaves_nothing(tmp_path, clock):
    SqliteStore(tmp_path / "l.db", clock, "FULL").close()
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(BackupFailed):
        backup_sqlite(tmp_path / "l.db", tmp_path / "a-file" / "copy.db")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file", "l.db", "l.db-writelock"]


def test_pruning_keeps_the_newest_scheduled_copies_and_nothing_else_is_touched(tmp_path):
    taken = [datetime(2026, 11, day, 3, 0, tzinfo=UTC) for day in (20, 21, 22, 23)]
    names = [backup_name(moment) for moment in taken]
    for name in [*names, "by-hand.db", "billing.db", "notes.txt"]:
        (tmp_path / name).write_text(name)
    deleted = prune_backups(tmp_path, keep=2)
    assert [path.name for path in deleted] == names[:2]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [*names[2:], "by-hand.db", "billing.db", "notes.txt"]
    )
    assert prune_backups(tmp_path, keep=2) == []


def test_scheduled_copies_are_named_by_their_utc_time_so_names_sort_in_time_order():
    berlin = timezone(timedelta(hours=1))
    assert backup_name(datetime(2026, 11, 26, 4, 5, 6, 7, tzinfo=berlin)) == (
        "billing-20261126T030506.000007Z.db"
    )
    earlier, later = datetime(2026, 1, 2, tzinfo=UTC), datetime(2026, 10, 1, tzinfo=UTC)
    assert backup_name(earlier) < backup_name(later)
