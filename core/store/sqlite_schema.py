"""SQLite's schema: the numbered ``sqlite_migrations/*.sql`` applied in order, each once."""

import sqlite3

from core.store.base import migration_scripts, newer_migrations


def migrate_now(connection: sqlite3.Connection, now_ms: int) -> tuple[list[str], list[str]]:
    """Apply pending migrations before the writer starts; a second process waits its turn.

    Returns the names applied, and those the database has that this release does not ship.
    """
    connection.execute("BEGIN IMMEDIATE")
    try:
        applied = _migrate(connection, now_ms)
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return applied


def _migrate(connection: sqlite3.Connection, now_ms: int) -> tuple[list[str], list[str]]:
    """Apply the numbered ``sqlite_migrations/*.sql`` not yet recorded, in order."""
    connection.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations"
        " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL) STRICT"
    )
    recorded = connection.execute("SELECT version, name FROM schema_migrations").fetchall()
    applied = {version for version, _ in recorded}
    scripts = migration_scripts("sqlite_migrations")
    done = []
    for script in scripts:
        if script.version in applied:
            continue
        for statement in _split_statements(script.sql):
            connection.execute(statement)
        connection.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
            (script.version, script.name, now_ms),
        )
        done.append(script.name)
    return done, newer_migrations(recorded, scripts)


def _split_statements(script: str) -> list[str]:
    """Split a migration into statements (``executescript`` would commit our transaction)."""
    statements, current = [], []
    for line in script.splitlines():
        current.append(line)
        candidate = "\n".join(current)
        if sqlite3.complete_statement(candidate):
            if candidate.strip() and not _only_comments(candidate):
                statements.append(candidate)
            current = []
    assert _only_comments("\n".join(current)), "migration ends with an unfinished statement"
    return statements


def _only_comments(text: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in text.splitlines())
