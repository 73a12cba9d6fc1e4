"""``backup-database``: a scheduled copy of the SQLite ledger, the newest ``keep`` kept.

Each run copies the database with ``core.store.sqlite_backup`` (consistent while the service
writes, checked, never overwriting) into ``folder`` (default ``<DATA_DIR>/backups``) under the
UTC time it was taken, then deletes the oldest scheduled copies past ``keep``. A copy on the
database's own disk does not survive that disk: point ``folder`` at another one. On PostgreSQL
the run copies nothing and says so (``pg_dump`` and the server's own backups do that job). A
failed run mails the admin, as every flow's does.
"""

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from prefect import flow
from prefect.logging import get_run_logger
from pydantic import Field

from core.store.sqlite import sqlite_path_from_url
from core.store.sqlite_backup import BACKUPS_KEPT_MAX, backup_name, backup_sqlite, prune_backups
from flows.common import ADMIN_NOTICE_HOOKS, flow_settings

BACKUP_FOLDER_NAME = "backups"
FOLDER_LENGTH_MAX = 4096  # PATH_MAX on Linux


@flow(name="backup-database", **ADMIN_NOTICE_HOOKS)
def backup_database(
    folder: Annotated[str, Field(min_length=1, max_length=FOLDER_LENGTH_MAX)] | None = None,
    keep: Annotated[int, Field(ge=1, le=BACKUPS_KEPT_MAX)] = 7,
) -> dict:
    """Copy the SQLite database into a folder and keep its newest copies.

    Args:
        folder: Where the copies go, on the worker's machine; empty: DATA_DIR/backups. Put
            it on another disk than the database, or a lost disk takes both.
        keep: How many of the newest copies to keep (1 to 1000); older ones are deleted.
    """
    logger = get_run_logger()
    settings = flow_settings()
    if not settings.database_url.startswith("sqlite:"):
        logger.warning("DATABASE_URL is PostgreSQL: nothing copied; back it up with pg_dump")
        return {"backup": None, "size_bytes": 0, "deleted": []}
    target_folder = Path(folder) if folder else settings.data_dir / BACKUP_FOLDER_NAME
    made = backup_sqlite(
        sqlite_path_from_url(settings.database_url),
        target_folder / backup_name(datetime.now(UTC)),
    )
    deleted = prune_backups(target_folder, keep)
    logger.info(
        "backed up to %s (%d bytes); deleted %d older copies",
        made.path,
        made.size_bytes,
        len(deleted),
    )
    return {
        "backup": str(made.path),
        "size_bytes": made.size_bytes,
        "deleted": [str(path) for path in deleted],
    }
