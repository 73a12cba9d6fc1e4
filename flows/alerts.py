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

A channel that is down (SMTP does not answer or refuses this client; the webhook does not
answer) is not tried again in that run after its first such failure, nor retried: the next
run tries again, and every other alert waits untouched (no attempt counted). The run then ends
Failed, as it does when any alert is left pending after a failure, and its failure notice goes
out by whichever channel still works (``flows.common``).

Each run also mails ``ADMIN_EMAIL`` the admin notices waiting in the same store (a forced reset,
``core.resets``), oldest first, at most ``ADMIN_NOTICES_MAX`` a run; one that cannot be mailed
stays pending for the next run.
"""

from typing import Annotated

import httpx
from prefect import flow, task
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from pydantic import Field

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
from flows.mail import mail_channel_down, send_mail

ALERT_BATCHES_MAX = 50
ADMIN_NOTICES_MAX = 100
CHANNEL_RETRIES = 2
RETRY_DELAY_SECONDS_MAX = 600
WEBHOOK_TIMEOUT_SECONDS = 10
DEDUP_HEADER = "Idempotency-Key"


def _failure(state: object) -> object:
    return state.result(raise_on_failure=False)  # type: ignore[attr-defined]


def _mail_may_pass(_task: object, _run: object, state: object) -> bool:
    """Retry a refused message; not a server that is down, which fails every message."""
    return not mail_channel_down(_failure(state))  # type: ignore[arg-type]


def _webhook_may_pass(_task: object, _run: object, state: object) -> bool:
    """Retry a refusal (an HTTP error status); not a receiver that does not answer."""
    return not isinstance(_failure(state), httpx.TransportError)


@task(name="mail-alert", cache_policy=NO_CACHE, retry_condition_fn=_mail_may_pass)
def mail_alert(alert: Alert, to: str) -> None:
    """Settings are read here, not passed: task inputs must never carry the SMTP password."""
    subject, body = alert_message(alert)
    send_mail(flow_settings(), to, subject, body)


class ChannelsDown(Exception):
    """A run left alerts pending: a channel was down or refused them."""


def deliver_admin_notices(
    ledger: Ledger, settings: Settings, retried: dict, down: dict[AlertChannel, str]
) -> tuple[int, int]:
    """Mail pending admin notices; (mailed, failed). Without SMTP or an admin they wait; the
    first failure of a server that is down marks mail down in ``down`` and stops."""
    if settings.smtp_host is None or settings.admin_email is None:
        return 0, 0
    mail = mail_admin.with_options(**retried, retry_condition_fn=_mail_may_pass)
    mailed, failed = 0, 0
    for notice in ledger.pending_admin_notices(ADMIN_NOTICES_MAX):
        try:
            mail(notice.subject, notice.body)
        except Exception as error:  # noqa: BLE001 - the notice stays pending for the next run
            get_run_logger().warning("admin notice %d not mailed: %s", notice.id, error)
            failed += 1
            if mail_channel_down(error):
                down[AlertChannel.EMAIL] = _down_text(settings, AlertChannel.EMAIL, error)
                break
            continue
        ledger.admin_notice_delivered(notice.id)
        mailed += 1
    return mailed, failed


def _down_text(settings: Settings, channel: AlertChannel, error: BaseException) -> str:
    if channel is AlertChannel.EMAIL:
        where = f"SMTP server {settings.smtp_host}:{settings.smtp_port}"
    else:
        where = "ALERT_WEBHOOK_URL"
    return f"{where} is down: {bounded_error(error)}"


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


@task(name="post-alert", cache_policy=NO_CACHE, retry_condition_fn=_webhook_may_pass)
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


def _is_down(channel: AlertChannel, error: BaseException) -> bool:
    if channel is AlertChannel.EMAIL:
        return mail_channel_down(error)
    return isinstance(error, httpx.TransportError)


@flow(name="deliver-alerts", **ADMIN_NOTICE_HOOKS)
def deliver_alerts(
    batch_size: Annotated[int, Field(ge=1, le=ALERT_BATCH_MAX)] = ALERT_BATCH_MAX,
    retry_delay_seconds: Annotated[float, Field(ge=0, le=RETRY_DELAY_SECONDS_MAX)] = 10,
) -> dict:
    """Deliver pending alerts by mail and webhook, and mail pending admin notices.

    Args:
        batch_size: Alerts read from the outbox at a time (1 to 100).
        retry_delay_seconds: Wait before retrying an alert a channel refused (0 to 600);
            a channel that is down is not retried in the run.
    """
    logger = get_run_logger()
    settings = flow_settings()
    channels = _channels(settings)
    retried = {"retries": CHANNEL_RETRIES, "retry_delay_seconds": retry_delay_seconds}
    send = {
        AlertChannel.EMAIL: mail_alert.with_options(**retried),
        AlertChannel.WEBHOOK: post_alert.with_options(**retried),
    }
    down: dict[AlertChannel, str] = {}
    delivered, failed, waiting, after_id = 0, 0, 0, 0
    with opened_ledger(settings) as ledger:
        notices_mailed, notices_failed = deliver_admin_notices(ledger, settings, retried, down)
        if not channels:
            logger.warning("neither SMTP_HOST nor ALERT_WEBHOOK_URL is set: alerts stay pending")
        for _ in range(ALERT_BATCHES_MAX if channels else 0):
            batch = ledger.pending_alerts(after_id, batch_size)
            if not batch:
                break
            for alert in batch:
                done, errors = set(alert.channels_done), []
                recipient = _recipient(settings, alert)
                if AlertChannel.EMAIL in channels - done and recipient is None:
                    done.add(AlertChannel.EMAIL)  # nobody to mail: the channel has no work
                to_try = sorted(channels - done - down.keys())
                if not to_try:
                    waiting += 1  # every channel it still needs is down: untouched
                    continue
                for channel in to_try:
                    arguments = (alert, recipient) if channel is AlertChannel.EMAIL else (alert,)
                    try:
                        send[channel](*arguments)
                        done.add(channel)
                    except Exception as error:  # noqa: BLE001 - kept on the alert, retried later
                        errors.append(f"{channel.value}: {bounded_error(error)}")
                        if _is_down(channel, error):
                            down[channel] = _down_text(settings, channel, error)
                            logger.error("%s: not tried again in this run", down[channel])
                left = channels - done
                error_text = "; ".join(errors)[:ALERT_ERROR_CHARS_MAX] if errors else None
                if left and error_text is None:
                    error_text = "; ".join(f"{c.value}: down" for c in sorted(left))
                ledger.record_alert_attempt(alert.id, frozenset(done), error_text)
                delivered, failed = delivered + (not left), failed + bool(left)
            after_id = batch[-1].id
    result = {
        "delivered": delivered,
        "failed": failed + waiting,
        "notices_mailed": notices_mailed,
        "notices_failed": notices_failed,
    }
    logger.info(
        "alerts delivered: %d, still pending: %d; admin notices mailed: %d, pending: %d",
        delivered,
        failed + waiting,
        notices_mailed,
        notices_failed,
    )
    if down or failed or waiting or notices_failed:
        reasons = list(down.values()) or ["a channel refused them"]
        raise ChannelsDown(
            f"{failed + waiting} alerts and {notices_failed} admin notices stay pending: "
            + "; ".join(reasons)
        )
    return result
