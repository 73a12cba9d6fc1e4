"""What every flow shares: settings, the ledger opened and closed around a run, admin mail,
and the state hooks that tell the admin when a run fails or crashes.

Failure notice is by flow state hooks (``on_failure``, ``on_crashed``) rather than a Prefect
automation: they run wherever the flow runs (a deployment, ``billing reset``, a test), need no
notification block stored on the server, and mail through the same SMTP settings as every
other message. When mail cannot reach the admin (no SMTP_HOST or ADMIN_EMAIL, or the server
is down, which is often why the run failed), the notice is POSTed to ALERT_WEBHOOK_URL instead,
so it goes out through whatever still works. A run whose process is killed outright (SIGKILL,
power loss) runs no hook; the Prefect UI still shows it as crashed.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from prefect import Flow, task
from prefect.client.schemas.objects import FlowRun
from prefect.logging import get_run_logger
from prefect.states import State

from core.errors import ConfigurationError
from core.ledger import Ledger
from core.service import open_ledger
from core.settings import Settings
from flows.mail import send_mail

MAIL_RETRIES = 3
MAIL_RETRY_DELAY_SECONDS = [5, 30, 120]
NOTICE_WEBHOOK_TIMEOUT_SECONDS = 10

log = logging.getLogger(__name__)


def flow_settings() -> Settings:
    """Settings from the environment of the process running the flow."""
    return Settings()


@contextmanager
def opened_ledger(settings: Settings) -> Iterator[Ledger]:
    """The ledger for one flow run; its store is closed when the run is done with it."""
    store, ledger = open_ledger(settings, one_job=True)
    try:
        yield ledger
    finally:
        store.close()


@task(name="mail-admin", retries=MAIL_RETRIES, retry_delay_seconds=MAIL_RETRY_DELAY_SECONDS)
def mail_admin(subject: str, body: str) -> bool:
    """Mail ADMIN_EMAIL; False (and a warning) when no admin address or SMTP server is set."""
    settings = flow_settings()
    if settings.admin_email is None or settings.smtp_host is None:
        get_run_logger().warning("ADMIN_EMAIL or SMTP_HOST is not set: no mail for %r", subject)
        return False
    send_mail(settings, settings.admin_email, subject, body)
    return True


def notify_admin_of_state(flow: Flow, flow_run: FlowRun, state: State) -> None:
    """State hook: tell the admin that a run ended failed or crashed, by mail or else by the
    alert webhook; never raises."""
    subject = f"Flow run {flow_run.name} of {flow.name} is {state.name}"
    body = (
        f"Flow: {flow.name}\nRun: {flow_run.name} ({flow_run.id})\nState: {state.name}\n"
        f"Message: {state.message or '-'}\n"
    )
    try:
        settings = flow_settings()
    except (ConfigurationError, ValueError) as error:
        log.error("could not read the settings to tell the admin that %s: %s", subject, error)
        return
    if settings.admin_email is not None and settings.smtp_host is not None:
        try:
            send_mail(settings, settings.admin_email, subject, body)
            return
        except (ConfigurationError, OSError, ValueError) as error:
            log.error("could not mail the admin that %s: %s", subject, error)
    if settings.alert_webhook_url is not None:
        try:
            post_notice(settings.alert_webhook_url, flow.name, str(flow_run.id), subject, body)
            return
        except httpx.HTTPError as error:
            # Not the error's text: httpx puts the URL in it, and a webhook URL often holds a token.
            name = type(error).__name__
            log.error("could not post to ALERT_WEBHOOK_URL that %s: %s", subject, name)
    log.error("no channel reached the admin: %s", subject)


def post_notice(url: str, flow_name: str, flow_run_id: str, subject: str, body: str) -> None:
    """POST a failed-run notice to the alert webhook (JSON, with an ``Idempotency-Key``)."""
    response = httpx.post(
        url,
        json={"kind": "flow_run_failed", "flow": flow_name, "title": subject, "text": body},
        headers={"Idempotency-Key": f"cloudfreedom-flow-run-{flow_run_id}"},
        timeout=NOTICE_WEBHOOK_TIMEOUT_SECONDS,
    )
    response.raise_for_status()


ADMIN_NOTICE_HOOKS = {
    "on_failure": [notify_admin_of_state],
    "on_crashed": [notify_admin_of_state],
}
