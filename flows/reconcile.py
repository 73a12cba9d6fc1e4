"""``reconcile-usage``: prove the ledger's counters against its facts, backfill lost usage, report.

Checks and repairs are ``Ledger.reconcile`` (``core/reconcile.py``); with ``repair=true`` each
difference is fixed with an audit row. When ``LITELLM_URL`` and ``LITELLM_ADMIN_KEY`` are set,
LiteLLM's spend logs of the last ``litellm_days`` UTC days are read and usage that never reached
log-usage is recorded (always, whatever ``repair`` says: it is a missing fact, written once per
request id and audited, never a change to a recorded one). Backfilled usage counts in the
period open when it is recorded. The admin gets a mail when anything was found. The run also
deletes holds closed longer ago than the retention (housekeeping, not a repair: a closed hold no
longer counts anywhere; nothing else ever deletes them).
"""

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Annotated

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.tasks import exponential_backoff
from pydantic import Field

from core.ledger import Ledger
from core.reconcile import ReconcileReport
from flows.common import ADMIN_NOTICE_HOOKS, flow_settings, mail_admin, opened_ledger
from flows.litellm_spend import LITELLM_DAYS_MAX, SpendLogs, read_spend_logs

SPEND_LOG_RETRIES = 3
RETENTION_DAYS_MAX = 3650
DAY_SECONDS = 24 * 3600


@task(name="check-ledger", cache_policy=NO_CACHE)
def check_ledger(ledger: Ledger, repair: bool) -> ReconcileReport:
    return ledger.reconcile(repair)


@task(
    name="read-litellm-spend-logs",
    retries=SPEND_LOG_RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
)
def fetch_spend_logs(days: int) -> SpendLogs:
    """The URL and key are read here, not passed: task inputs must not carry the admin key."""
    settings = flow_settings()
    assert settings.litellm_url is not None and settings.litellm_admin_key is not None
    today = datetime.now(UTC).date()
    return read_spend_logs(
        settings.litellm_url,
        settings.litellm_admin_key.get_secret_value(),
        today - timedelta(days=days - 1),
        today,
    )


@flow(name="reconcile-usage", **ADMIN_NOTICE_HOOKS)
def reconcile_usage(
    repair: bool = False,
    litellm_days: Annotated[int, Field(ge=1, le=LITELLM_DAYS_MAX)] = 2,
    reservations_retention_days: Annotated[int, Field(ge=0, le=RETENTION_DAYS_MAX)] = 30,
) -> dict:
    """Report every drift (repairing it when ``repair``), backfill from LiteLLM, mail findings.

    Args:
        repair: Fix each difference found, with an audit row; off, only report it.
        litellm_days: UTC days of LiteLLM spend logs to read and backfill from (1 to 31;
            only with LITELLM_URL and LITELLM_ADMIN_KEY).
        reservations_retention_days: Delete budget holds closed more than this many days ago
            (0 keeps them all; at most 3650).
    """
    logger = get_run_logger()
    settings = flow_settings()
    with opened_ledger(settings) as ledger:
        report = check_ledger(ledger, repair)
        if settings.litellm_url is not None and settings.litellm_admin_key is not None:
            logs = fetch_spend_logs(litellm_days)
            report.backfill = ledger.backfill_usage(logs.entries)
            report.backfill.truncated = report.backfill.truncated or bool(
                logs.days_possibly_incomplete
            )
        deleted = 0
        if reservations_retention_days > 0:
            deleted = ledger.prune_closed_reservations(reservations_retention_days * DAY_SECONDS)
    logger.info(
        "reconciliation: %d differences, %d repaired, %d closed holds deleted",
        len(report.drifts),
        len(report.repaired),
        deleted,
    )
    if report.anything_found:
        mail_admin("Usage reconciliation found differences", report.text())
    return dataclasses.asdict(report) | {"reservations_deleted": deleted}
