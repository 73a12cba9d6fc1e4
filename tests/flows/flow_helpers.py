"""Helpers shared by the flow tests: money and users seeded in the file the flows open, and
the inbox of the test SMTP server."""

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from email.message import Message

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Message as MessageHandler

from core.accounts import Product
from core.ledger import Ledger, wall_clock_ms
from core.money import Money, money_from_input
from core.periods import label_at, label_bounds_ms
from core.settings import Settings

PASSWORD = "correct horse battery"


def usd(amount: str | int) -> Money:
    return money_from_input(str(amount))


def seed_users(ledger: Ledger, spend: dict[str, str], budget: str = "10") -> None:
    """A plan of ``budget`` dollars and one user per entry of ``spend`` who has spent that much."""
    ledger.put_product(Product("basic", "Basic", usd(budget)))
    for user_id, amount in spend.items():
        ledger.provision_user(f"{user_id}@example.com", PASSWORD, "basic", "t1", user_id)
        if usd(amount) > 0:
            ledger.log_usage(user_id, "gpt-4o", f"{user_id}-r1", 10, 20, usd(amount), None)


def this_month(settings: Settings) -> str:
    """The label of the month the flows run in now, in the settings' budget zone."""
    return label_at(wall_clock_ms(), settings.zone)


def backdate_open_periods(settings: Settings, label: str) -> None:
    """Move every open period to ``label``'s month, as if the users had been provisioned then:
    the flows read the wall clock, so a reset due now needs periods from an earlier month."""
    start_ms = label_bounds_ms(label, settings.zone)[0]
    path = settings.database_url.removeprefix("sqlite:///")
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("UPDATE users SET period_label = ?, period_start = ?", (label, start_ms))


class Inbox(MessageHandler):
    """Keeps every message the SMTP server receives, in order."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port
        self.messages: list[Message] = []

    def handle_message(self, message: Message) -> None:
        self.messages.append(message)


@contextmanager
def smtp_serving(inbox: Inbox, **options: object) -> Iterator[Inbox]:
    """A real SMTP server (aiosmtpd) on loopback at ``inbox.port``, its messages to ``inbox``;
    ``options`` go to aiosmtpd (TLS, authentication)."""
    controller = Controller(inbox, hostname="127.0.0.1", port=inbox.port, **options)
    controller.start()
    try:
        yield inbox
    finally:
        controller.stop()
