"""Mail from the flows, sent through prefect-email's SMTP credentials block."""

import smtplib
from email.message import EmailMessage

from prefect_email import EmailServerCredentials

from core.errors import ConfigurationError
from core.settings import Settings

# Connect and EHLO of the reachability check: a local or LAN relay answers in milliseconds, a
# firewalled port never does (the kernel's own connect timeout is about 2 minutes).
SMTP_CHECK_TIMEOUT_SECONDS = 5


class MailUnreachable(Exception):
    """The SMTP server did not answer a connect and EHLO; the message names host and port."""


def mail_credentials(settings: Settings) -> EmailServerCredentials:
    """The SMTP block built from the environment; raises when SMTP_HOST is not set."""
    if settings.smtp_host is None:
        raise ConfigurationError("SMTP_HOST is not set: the flows cannot send mail")
    password = settings.smtp_password.get_secret_value() if settings.smtp_password else ""
    return EmailServerCredentials(
        smtp_server=settings.smtp_host,
        smtp_port=settings.smtp_port,
        smtp_type=settings.smtp_security,
        username=settings.smtp_username,
        password=password,
    )


def check_smtp(settings: Settings) -> None:
    """Connect to the SMTP server and say EHLO (no login, no message); ``MailUnreachable``
    naming ``SMTP_HOST:SMTP_PORT`` when that fails, ``ConfigurationError`` without SMTP_HOST."""
    mail_credentials(settings)
    address = f"{settings.smtp_host}:{settings.smtp_port}"
    smtp = smtplib.SMTP_SSL if settings.smtp_security == "SSL" else smtplib.SMTP
    timeout = SMTP_CHECK_TIMEOUT_SECONDS
    try:
        with smtp(settings.smtp_host, settings.smtp_port, timeout=timeout) as server:
            code, _ = server.ehlo()
    except OSError as error:  # smtplib's errors are OSErrors too
        raise MailUnreachable(
            f"SMTP server {address} (SMTP_HOST, SMTP_PORT) is unreachable:"
            f" {type(error).__name__}: {error}"
        ) from None
    if not 200 <= code < 300:
        raise MailUnreachable(f"SMTP server {address} answered EHLO with {code}")


def mail_channel_down(error: BaseException) -> bool:
    """Whether a send failure will fail every further message: nothing answers, or the server
    refuses this client (greeting, TLS, login), unlike a refused recipient or message."""
    return isinstance(error, OSError) and not isinstance(
        error, smtplib.SMTPRecipientsRefused | smtplib.SMTPDataError
    )


def send_mail(settings: Settings, to: str, subject: str, body: str) -> None:
    """Send one plain-text message; raises on any SMTP failure so the caller's retries apply."""
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    with mail_credentials(settings).get_server() as server:
        server.send_message(message)
