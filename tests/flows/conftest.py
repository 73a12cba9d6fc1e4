"""Shared by the flow tests: one Prefect harness per session, a real SMTP server per module."""

import socket
from collections.abc import Iterator
from email.message import Message

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Message as MessageHandler
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.testing.utilities import prefect_test_harness

# The harness's server takes ~20 s to start on a busy 2-core machine; its own default is 30 s.
HARNESS_STARTUP_SECONDS_MAX = 120


@pytest.fixture(scope="session", autouse=True)
def prefect_harness() -> Iterator[None]:
    """A temporary Prefect API and database; without the heartbeat each flow run costs ~1 s more."""
    with (
        prefect_test_harness(server_startup_timeout=HARNESS_STARTUP_SECONDS_MAX),
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield


class Inbox(MessageHandler):
    """Keeps every message the SMTP server receives, in order."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port
        self.messages: list[Message] = []

    def handle_message(self, message: Message) -> None:
        self.messages.append(message)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def smtp_server() -> Iterator[Inbox]:
    """A real SMTP server (aiosmtpd) on a free loopback port, for the whole module."""
    inbox = Inbox(free_port())
    controller = Controller(inbox, hostname="127.0.0.1", port=inbox.port)
    controller.start()
    try:
        yield inbox
    finally:
        controller.stop()


@pytest.fixture
def smtp_inbox(smtp_server: Inbox) -> Inbox:
    """The module's SMTP server, emptied for this test."""
    smtp_server.messages.clear()
    return smtp_server
