"""An online copy of a SQLite ledger, consistent while the service goes on writing.

SQLite's backup API copies the database as one read transaction sees it: in WAL mode writers
go on meanwhile, and the copy holds every write committed before it began and none after. The
copy is made beside the target as ``<name>.partial``, checked with ``PRAGMA quick_check``,
flushed to disk and linked into place, so the target is either absent or a whole, checked
database. An existing target is never overwritten, even one made while the copy was taken.

Scheduled copies (the ``backup-database`` flow) are named by the UTC time they were taken,
``billing-YYYYmmddTHHMMSS.ffffffZ.db``, so names sort in time order; ``prune_backups`` keeps
the newest and deletes nothing else.
"""

import os
import re
import sqlite3
from contextlib import closing, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from core.errors import ConfigurationError

BUSY_TIMEOUT_MS = 5_000
BACKUPS_KEPT_MAX = 1_000
_BACKUP_NAME = re.compile(r"billing-\d{8}T\d{6}\.\d{6}Z\.db")


class BackupFailed(Exception):
    """The copy could not be made or did not check out; no target was written."""


@dataclass(frozen=True, slots=True)
class Backup:
    path: Path
    size_bytes: int


def backup_sqlite(source: Path, target: Path) -> Backup:
    """Copy the database at ``source`` to ``target`` (a new file), checked and durable."""
    if not source.is_file():
        raise ConfigurationError(f"DATABASE_URL: {source} is not a database file")
    if target.exists():
        raise ConfigurationError(f"backup target {target} exists; it is not overwritten")
    partial = target.with_name(target.name + ".partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.unlink(missing_ok=True)
        with (
            closing(sqlite3.connect(source, isolation_level=None)) as reader,
            closing(sqlite3.connect(partial, isolation_level=None)) as copy,
        ):
            reader.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            reader.backup(copy)
            copy.execute("PRAGMA journal_mode=DELETE")  # one file, no WAL beside it
            checked = copy.execute("PRAGMA quick_check").fetchone()
        if checked != ("ok",):
            raise BackupFailed(f"the copy failed quick_check: {checked}")
        _flush(partial)
        os.link(partial, target)  # unlike a rename, never replaces a target made meanwhile
        partial.unlink()
        _flush(target.parent)
    except (sqlite3.Error, OSError) as error:
        _remove(partial)
        raise BackupFailed(f"{type(error).__name__}: {error}") from None
    except BackupFailed:
        _remove(partial)
        raise
    return Backup(target, target.stat().st_size)


def backup_name(taken_at: datetime) -> str:
    """The file name of a scheduled copy taken at ``taken_at`` (aware)."""
    assert taken_at.tzinfo is not None, taken_at
    return f"billing-{taken_at.astimezone(UTC):%Y%m%dT%H%M%S.%f}Z.db"


def prune_backups(folder: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` scheduled copies in ``folder``; return the deleted.

    Only files named as ``backup_name`` names them are counted or deleted: a copy made by hand
    under another name, and anything else in the folder, stays.
    """
    assert 1 <= keep <= BACKUPS_KEPT_MAX, keep
    copies = sorted(
        path for path in folder.iterdir() if path.is_file() and _BACKUP_NAME.fullmatch(path.name)
    )
    deleted = copies[:-keep]
    for path in deleted:
        path.unlink()
    return deleted


def _remove(partial: Path) -> None:
    """Remove what a failed copy left; there is nothing to remove where no file could be made."""
    with suppress(FileNotFoundError, NotADirectoryError):
        partial.unlink()


def _flush(path: Path) -> None:
    """fsync a file, or a folder after a new name in it, so the copy survives a crash."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
