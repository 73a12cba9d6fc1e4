"""``deliver-alerts``: send pending budget alerts by mail and to a webhook, mark them delivered.

Alerts wait in the store's outbox (written with the usage that crossed a threshold). Each run
reads them in batches (oldest first, each alert at most once a run), sends each on every
configured channel it has not reached yet, and records the attempt: channels reached, and the
error if any (kept short). An alert stays pending until every configured channel took it, so a
receiver down for hours gets it on the first run after it is back, and a channel that already
took it is not sent it again. Mail goes to the user for a user's alert and to ``ADMIN_EMAIL`` for
a tenant's; the webhook (``ALERT_WEBHOOK_URL``) receives every alert as JSON through Prefect's
``CustomWebhookNotificationBlock``, with the alert's dedup key in the ``Idempotency-Key`` header.
With no channel configured, alerts stay pending.

Each run also mails ``ADMIN_EMAIL`` the admin notices waiting in the same store (a forced reset,
``core.resets``), oldest first, at most ``ADMIN_NOTICES_MAX`` a run; one that cannot be mailed
stays pending for the next run.
"""

import httpx
from prefect import flow, task
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from core.alerts import (
    ALERT_BATCH_MAX,
    ALERT_ERROR_CHARS_MAX,
    Alert,
    AlertChannel,
    AlertSubject,
    alert_message,
    bounded_error,
)
from core.ledger import Ledger
from core.money import money_to_text
from core.settings import Settings
from flows.common import ADMIN_NOTICE_HOOKS, flow_settings, mail_admin, opened_ledger
from flows.mail import send_mail

ALERT_BATCHES_MAX = 50
ADMIN_NOTICES_MAX = 100
CHANNEL_RETRIES = 2
RETRY_DELAY_SECONDS_MAX = 600
WEBHOOK_TIMEOUT_SECONDS = 10
DEDUP_HEADER = "Idempotency-Key"


@task(name="mail-alert", cache_policy=NO_CACHE)
def mail_alert(alert: Alert, to: str) -> None:
    """Settings are read here, not passed: task inputs must never carry the SMTP password."""
    subject, body = alert_message(alert)
    send_mail(flow_settings(), to, subject, body)


def deliver_admin_notices(ledger: Ledger, settings: Settings, retried: dict) -> tuple[int, int]:
    """Mail pending admin notices; (mailed, failed). Without SMTP or an admin they wait."""
    if settings.smtp_host is None or settings.admin_email is None:
        return 0, 0
    mail = mail_admin.with_options(**retried)
    mailed, failed = 0, 0
    for notice in ledger.pending_admin_notices(ADMIN_NOTICES_MAX):
        try:
            mail(notice.subject, notice.body)
        except Exception as error:  # noqa: BLE001 - the notice stays pending for the next run
            get_run_logger().warning("admin notice %d not mailed: %s", notice.id, error)
            failed += 1
            continue
        ledger.admin_notice_delivered(notice.id)
        mailed += 1
    return mailed, failed


def webhook_block(url: str, alert: Alert) -> CustomWebhookNotificationBlock:
    """A webhook block for one alert: its JSON, and its dedup key as a header."""
    return CustomWebhookNotificationBlock(
        name="cloudfreedom-billing-alerts",
        url=url,
        method="POST",
        headers={DEDUP_HEADER: alert.dedup_key},
        json_data={
            "alert_id": alert.id,
            "dedup_key": alert.dedup_key,
            "subject": alert.subject.value,
            "subject_id": alert.subject_id,
            "period": alert.period_label,
            "threshold_percent": alert.threshold_percent,
            "used": money_to_text(alert.used),
            "limit": money_to_text(alert.limit),
            "title": "{{subject}}",
            "text": "{{body}}",
        },
        timeout=WEBHOOK_TIMEOUT_SECONDS,
    )


class WebhookRefused(Exception):
    """The webhook answered with an error status."""


@task(name="post-alert", cache_policy=NO_CACHE)
def post_alert(alert: Alert) -> None:
    """The URL is read here, not passed: a webhook URL often carries a token.

    A refusal is re-raised without the URL httpx puts in its message, so the token reaches
    neither the alert's kept error nor the task's state in the Prefect UI.
    """
    url = flow_settings().alert_webhook_url
    assert url is not None
    subject, body = alert_message(alert)
    try:
        webhook_block(url, alert).notify(body, subject)
    except httpx.HTTPStatusError as error:
        raise WebhookRefused(f"webhook answered HTTP {error.response.status_code}") from None


def _recipient(settings: Settings, alert: Alert) -> str | None:
    return alert.email if alert.subject is AlertSubject.USER else settings.admin_email


def _channels(settings: Settings) -> set[AlertChannel]:
    channels = set()
    if settings.smtp_host is not None:
        channels.add(AlertChannel.EMAIL)
    if settings.alert_webhook_url is not None:
        channels.add(AlertChannel.WEBHOOK)
    return channels


@flow(name="deliver-alerts", **ADMIN_NOTICE_HOOKS)
def deliver_alerts(batch_size: int = ALERT_BATCH_MAX, retry_delay_seconds: float = 10) -> dict:
    """Deliver pending alerts in batches of ``batch_size``; each channel retried in the run."""
    if not 1 <= batch_size <= ALERT_BATCH_MAX:
        raise ValueError(f"batch_size must be between 1 and {ALERT_BATCH_MAX}")
    if not 0 <= retry_delay_seconds <= RETRY_DELAY_SECONDS_MAX:
        raise ValueError(f"retry_delay_seconds must be between 0 and {RETRY_DELAY_SECONDS_MAX}")
    logger = get_run_logger()
    settings = flow_settings()
    channels = _channels(settings)
    retried = {"retries": CHANNEL_RETRIES, "retry_delay_seconds": retry_delay_seconds}
    mail, post = mail_alert.with_options(**retried), post_alert.with_options(**retried)
    delivered, failed, after_id = 0, 0, 0
    with opened_ledger(settings) as ledger:
        notices_mailed, notices_failed = deliver_admin_notices(ledger, settings, retried)
        if not channels:
            logger.warning("neither SMTP_HOST nor ALERT_WEBHOOK_URL is set: alerts stay pending")
            return {
                "delivered": 0,
                "failed": 0,
                "notices_mailed": notices_mailed,
                "notices_failed": notices_failed,
            }
        for _ in range(ALERT_BATCHES_MAX):
            batch = ledger.pending_alerts(after_id, batch_size)
            if not batch:
                break
            for alert in batch:
                done, errors = set(alert.channels_done), []
                recipient = _recipient(settings, alert)
                if AlertChannel.EMAIL in channels - done:
                    if recipient is None:
                        done.add(AlertChannel.EMAIL)  # nobody to mail: the channel has no work
                    else:
                        try:
                            mail(alert, recipient)
                            done.add(AlertChannel.EMAIL)
                        except Exception as error:  # noqa: BLE001 - kept on the alert, retried later
                            errors.append(f"email: {bounded_error(error)}")
                if AlertChannel.WEBHOOK in channels - done:
                    try:
                        post(alert)
                        done.add(AlertChannel.WEBHOOK)
                    except Exception as error:  # noqa: BLE001 - kept on the alert, retried later
                        errors.append(f"webhook: {bounded_error(error)}")
                error_text = "; ".join(errors)[:ALERT_ERROR_CHARS_MAX] if errors else None
                ledger.record_alert_attempt(alert.id, frozenset(done), error_text)
                delivered, failed = delivered + (not errors), failed + bool(errors)
            after_id = batch[-1].id
    logger.info(
        "alerts delivered: %d, still pending after failures: %d; admin notices mailed: %d",
        delivered,
        failed,
        notices_mailed,
    )
    return {
        "delivered": delivered,
        "failed": failed,
        "notices_mailed": notices_mailed,
        "notices_failed": notices_failed,
    }
