"""Mail from the flows, sent through prefect-email's SMTP credentials block."""

import logging
import smtplib
import ssl
from email.message import EmailMessage

from prefect_email import EmailServerCredentials
from prefect_email.credentials import SMTPServer, SMTPType
from pydantic import Field

from core.errors import ConfigurationError
from core.settings import Settings

log = logging.getLogger(__name__)

# Connect and EHLO of the reachability check: a local or LAN relay answers in milliseconds, a
# firewalled port never does (the kernel's own connect timeout is about 2 minutes).
SMTP_CHECK_TIMEOUT_SECONDS = 5


class TimedEmailServerCredentials(EmailServerCredentials):
    """prefect-email's SMTP block, its connection opened with a timeout on the connect and on
    every reply awaited.

    The block's own ``get_server`` opens smtplib's connection with none: a relay that accepted
    the connection and never answered (overloaded, or a tarpit) held the task sending the mail,
    and with it a reset's run or the alert deliveries, for good. Security and login are the
    block's settings, applied as its ``get_server`` applies them.
    """

    # A block type of its own: under the parent's name it would replace prefect-email's type in
    # Prefect's registry for the whole process.
    _block_type_name = "Email Server Credentials With Timeout"

    timeout_seconds: float = Field(30, gt=0, le=300)

    def connect(self, timeout_seconds: float) -> smtplib.SMTP:
        """The server's connection, TLS from the start for ``SSL``; not upgraded, no login."""
        host = self.smtp_server
        if isinstance(host, SMTPServer):
            host = host.value
        port = self.smtp_type.value if self.smtp_port is None else self.smtp_port
        if self.smtp_type == SMTPType.SSL:
            return smtplib.SMTP_SSL(host, port, timeout=timeout_seconds, context=self._tls())
        return smtplib.SMTP(host, port, timeout=timeout_seconds)

    def get_server(self) -> smtplib.SMTP:
        """The connection ready to send: upgraded by STARTTLS, logged in when a username is set;
        closed again when a step fails."""
        server = self.connect(self.timeout_seconds)
        try:
            if self.smtp_type == SMTPType.STARTTLS:
                server.starttls(context=self._tls())
            if self.username is not None:
                if self.smtp_type == SMTPType.INSECURE or not self.verify:
                    log.warning(
                        "SMTP login without a verified TLS connection: the password may"
                        " cross the network in plain text"
                    )
                server.login(self.username, self.password.get_secret_value())
        except BaseException:
            server.close()
            raise
        return server

    def _tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


class MailUnreachable(Exception):
    """The SMTP server did not answer a connect and EHLO; the message names host and port."""


def mail_credentials(settings: Settings) -> TimedEmailServerCredentials:
    """The SMTP block built from the environment; raises when SMTP_HOST is not set."""
    if settings.smtp_host is None:
        raise ConfigurationError("SMTP_HOST is not set: the flows cannot send mail")
    password = settings.smtp_password.get_secret_value() if settings.smtp_password else ""
    return TimedEmailServerCredentials(
        smtp_server=settings.smtp_host,
        smtp_port=settings.smtp_port,
        smtp_type=settings.smtp_security,
        username=settings.smtp_username,
        password=password,
        timeout_seconds=settings.smtp_timeout_seconds,
    )


def check_smtp(settings: Settings) -> None:
    """Connect to the SMTP server and say EHLO (no login, no message); ``MailUnreachable``
    naming ``SMTP_HOST:SMTP_PORT`` when that fails, ``ConfigurationError`` without SMTP_HOST."""
    credentials = mail_credentials(settings)
    address = f"{settings.smtp_host}:{settings.smtp_port}"
    try:
        with credentials.connect(
            min(SMTP_CHECK_TIMEOUT_SECONDS, credentials.timeout_seconds)
        ) as server:
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
