"""Mail leaves through prefect-email's block and arrives at a real SMTP server (aiosmtpd)."""

import pytest
from flow_helpers import Inbox

from core.errors import ConfigurationError
from core.settings import Settings
from flows.mail import send_mail


def test_a_message_arrives_with_its_headers_and_body(smtp_inbox: Inbox) -> None:
    settings = Settings(smtp_host="127.0.0.1", smtp_port=smtp_inbox.port, smtp_security="INSECURE")
    send_mail(settings, "admin@example.com", "Budgets reset", "3 users reset")
    [message] = smtp_inbox.messages
    assert message["To"] == "admin@example.com"
    assert message["Subject"] == "Budgets reset"
    assert message.get_payload().strip() == "3 users reset"


def test_without_smtp_host_mail_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="SMTP_HOST"):
        send_mail(Settings(), "admin@example.com", "s", "b")
