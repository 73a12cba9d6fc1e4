"""What every flow shares: settings, the ledger opened and closed around a run, admin mail,
and the state hooks that tell the admin when a run fails or crashes.

Failure notice is by flow state hooks (``on_failure``, ``on_crashed``) rather than a Prefect
automation: they run wherever the flow runs (a deployment, ``billing reset``, a test), need no
notification block stored on the server, and mail through the same SMTP settings as every
other message. A run whose process is killed outright (SIGKILL, power loss) runs no hook; the
Prefect UI still shows it as crashed.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager

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

log = logging.getLogger(__name__)


def flow_settings() -> Settings:
    """Settings from the environment of the process running the flow."""
    return Settings()


@contextmanager
def opened_ledger(settings: Settings) -> Iterator[Ledger]:
    """The ledger for one flow run; its store is closed when the run is done with it."""
    store, ledger = open_ledger(settings)
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
    """State hook: mail the admin that a run ended failed or crashed; never raises."""
    subject = f"Flow run {flow_run.name} of {flow.name} is {state.name}"
    body = (
        f"Flow: {flow.name}\nRun: {flow_run.name} ({flow_run.id})\nState: {state.name}\n"
        f"Message: {state.message or '-'}\n"
    )
    try:
        settings = flow_settings()
        if settings.admin_email is None or settings.smtp_host is None:
            log.warning("ADMIN_EMAIL or SMTP_HOST is not set: %s", subject)
            return
        send_mail(settings, settings.admin_email, subject, body)
    except (ConfigurationError, OSError, ValueError) as error:
        log.error("could not mail the admin that %s: %s", subject, error)


ADMIN_NOTICE_HOOKS = {
    "on_failure": [notify_admin_of_state],
    "on_crashed": [notify_admin_of_state],
}
