"""Mail leaves through prefect-email's block and arrives at a real SMTP server (aiosmtpd): plain,
upgraded by STARTTLS with a login, or over TLS from the start; a relay that stops answering
fails the send within SMTP_TIMEOUT_SECONDS."""

import asyncio
import ipaddress
import smtplib
import socket
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiosmtpd.smtp import AuthResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flow_helpers import Inbox, smtp_serving
from ports import free_port

from core.errors import ConfigurationError
from core.settings import Settings
from flows.mail import MailUnreachable, check_smtp, mail_channel_down, send_mail

# How long the slow relay keeps DATA unanswered: far past the send's timeout.
SLOW_DATA_SECONDS = 3


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


def certificate_for_loopback(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key: the SMTP server's,
    trusted by the client through ``SSL_CERT_FILE``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certificate_path, key_path = directory / "smtp.pem", directory / "smtp.key"
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certificate_path, key_path


@pytest.fixture
def trusted_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """The server side of TLS with a certificate the client trusts."""
    certificate, key = certificate_for_loopback(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate, key)
    return context


def test_starttls_upgrades_before_the_login_and_the_message(trusted_tls: ssl.SSLContext) -> None:
    logins: list[tuple[bytes, bytes]] = []

    def authenticate(server, session, envelope, mechanism, auth_data) -> AuthResult:  # noqa: ANN001
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"relay password")

    options = {"tls_context": trusted_tls, "require_starttls": True}
    with smtp_serving(
        Inbox(free_port()), **options, authenticator=authenticate, auth_require_tls=True
    ) as inbox:
        settings = Settings(
            smtp_host="127.0.0.1",
            smtp_port=inbox.port,
            smtp_security="STARTTLS",
            smtp_username="billing",
            smtp_password="relay password",
        )
        check_smtp(settings)
        send_mail(settings, "admin@example.com", "Over TLS", "sent after STARTTLS")
    assert logins == [(b"billing", b"relay password")]
    [message] = inbox.messages
    assert message["Subject"] == "Over TLS"


def test_ssl_speaks_tls_from_the_first_byte(trusted_tls: ssl.SSLContext) -> None:
    with smtp_serving(Inbox(free_port()), ssl_context=trusted_tls) as inbox:
        settings = Settings(smtp_host="127.0.0.1", smtp_port=inbox.port, smtp_security="SSL")
        check_smtp(settings)
        send_mail(settings, "admin@example.com", "Over SSL", "sent over implicit TLS")
    [message] = inbox.messages
    assert message["Subject"] == "Over SSL"


def test_a_relay_that_never_greets_fails_the_send_within_the_timeout() -> None:
    """A listening socket that never accepts: the kernel completes the handshake, and no
    greeting ever comes, as from a hung relay."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        settings = Settings(
            smtp_host="127.0.0.1",
            smtp_port=port,
            smtp_security="INSECURE",
            smtp_timeout_seconds=0.5,
        )
        # smtplib reports the greeting's timeout as a disconnection.
        with pytest.raises((TimeoutError, smtplib.SMTPServerDisconnected)) as failure:
            send_mail(settings, "admin@example.com", "s", "b")
        assert mail_channel_down(failure.value), "the alerts flow stops mailing for this run"
        with pytest.raises(MailUnreachable, match=f"127.0.0.1:{port}"):
            check_smtp(settings)


class SlowData(Inbox):
    """Greets and takes the envelope, then keeps the message's DATA unanswered."""

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: ANN001
        await asyncio.sleep(SLOW_DATA_SECONDS)
        return "250 OK"


def test_a_relay_that_stops_answering_mid_message_fails_the_send_within_the_timeout() -> None:
    with smtp_serving(SlowData(free_port())) as inbox:
        settings = Settings(
            smtp_host="127.0.0.1",
            smtp_port=inbox.port,
            smtp_security="INSECURE",
            smtp_timeout_seconds=0.5,
        )
        # Without the timeout the send would wait the relay out and succeed.
        with pytest.raises((TimeoutError, smtplib.SMTPServerDisconnected)):
            send_mail(settings, "admin@example.com", "s", "b")
