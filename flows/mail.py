"""Mail from the flows, sent through prefect-email's SMTP credentials block."""

from email.message import EmailMessage

from prefect_email import EmailServerCredentials

from core.errors import ConfigurationError
from core.settings import Settings


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


def send_mail(settings: Settings, to: str, subject: str, body: str) -> None:
    """Send one plain-text message; raises on any SMTP failure so the caller's retries apply."""
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    with mail_credentials(settings).get_server() as server:
        server.send_message(message)
