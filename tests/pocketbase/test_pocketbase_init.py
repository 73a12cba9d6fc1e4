"""`billing pocketbase init` against a real PocketBase: adds the fields once, then changes nothing."""

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from email.message import Message

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Message as MessageHandler
from pocketbase_server import PocketBaseServer
from ports import free_port

from adapters.pocketbase import BILLING_FIELDS

# PocketBase sends its mails from a goroutine after answering 204: how long to look for one.
MAIL_WAIT_SECONDS_MAX = 30
NO_SMTP = {"SMTP_HOST": "", "APP_URL": ""}


def billing(pocketbase: PocketBaseServer, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, **pocketbase.environment(), **env}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def collection(pocketbase: PocketBaseServer, name: str) -> dict:
    with pocketbase.admin() as client:
        reply = client.get(f"/api/collections/{name}")
        reply.raise_for_status()
        return reply.json()


def test_init_adds_the_fields_and_a_second_run_is_a_no_op(pocketbase):
    before = collection(pocketbase, "users")
    first = billing(pocketbase, "pocketbase", "init", **NO_SMTP)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        "users: added fields user_id, product_id, tenant_id",
        "mail: SMTP_HOST is not set; PocketBase cannot mail password resets",
    ]
    after = collection(pocketbase, "users")
    fields = {field["name"]: field for field in after["fields"]}
    for name in BILLING_FIELDS:
        assert fields[name]["type"] == "text"
    # The collection's own fields (email, password, …) are all kept, with their ids.
    kept = {field["id"] for field in before["fields"]}
    assert kept <= {field["id"] for field in after["fields"]}

    second = billing(pocketbase, "pocketbase", "init", **NO_SMTP)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[0] == "users: fields are up to date"
    assert collection(pocketbase, "users")["fields"] == after["fields"]


def test_init_creates_a_missing_auth_collection(pocketbase):
    run = billing(pocketbase, "pocketbase", "init", POCKETBASE_COLLECTION="customers")
    assert run.returncode == 0, run.stderr
    created = collection(pocketbase, "customers")
    assert created["type"] == "auth"
    assert set(BILLING_FIELDS) <= {field["name"] for field in created["fields"]}


def test_init_names_the_problem_and_never_prints_the_admin_password(pocketbase):
    wrong = billing(pocketbase, "pocketbase", "init", POCKETBASE_ADMIN_PASSWORD="not-the-password")
    assert wrong.returncode == 1
    assert "POCKETBASE_ADMIN_PASSWORD" in wrong.stderr
    assert "not-the-password" not in wrong.stderr + wrong.stdout
    unset = billing(pocketbase, "pocketbase", "init", POCKETBASE_URL="")
    assert unset.returncode == 2
    assert "POCKETBASE_URL" in unset.stderr


class Inbox(MessageHandler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[Message] = []

    def handle_message(self, message: Message) -> None:
        self.messages.append(message)


@pytest.fixture
def mail_sink() -> Iterator[tuple[Inbox, int]]:
    """A real SMTP server (aiosmtpd), plain, on a free loopback port."""
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def test_init_gives_pocketbase_the_smtp_server_so_a_password_reset_is_mailed(pocketbase, mail_sink):
    inbox, port = mail_sink
    mail = {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(port),
        "SMTP_SECURITY": "INSECURE",
        "SMTP_PASSWORD": "smtp-secret-never-printed",
        "MAIL_FROM": "billing@example.com",
        "APP_URL": "http://app.example.com",
    }
    first = billing(pocketbase, "pocketbase", "init", **mail)
    assert first.returncode == 0, first.stderr
    assert "smtp-secret-never-printed" not in first.stdout + first.stderr
    # The sink takes no login: a run without SMTP_PASSWORD must clear the one set before.
    again = billing(pocketbase, "pocketbase", "init", **{**mail, "SMTP_PASSWORD": ""})
    assert again.returncode == 0, again.stderr
    assert f"mail: PocketBase sends through 127.0.0.1:{port} (SMTP_HOST, SMTP_PORT)" in again.stdout

    with pocketbase.admin() as client:
        created = client.post(
            "/api/collections/users/records",
            json={"email": "ada@example.com", "password": "p" * 12, "passwordConfirm": "p" * 12},
        )
        assert created.status_code == 200, created.text
    reply = httpx.post(
        f"{pocketbase.url}/api/collections/users/request-password-reset",
        json={"email": "ada@example.com"},
    )
    assert reply.status_code == 204
    deadline = time.monotonic() + MAIL_WAIT_SECONDS_MAX
    while not inbox.messages and time.monotonic() < deadline:
        time.sleep(0.1)
    [message] = inbox.messages
    assert "ada@example.com" in message["To"]
    assert "billing@example.com" in message["From"]
    assert message["Subject"] == "Reset your CloudFreedom password"
    text = (
        message.get_payload(decode=True)
        if not message.is_multipart()
        else b"".join(part.get_payload(decode=True) or b"" for part in message.walk())
    )
    assert re.search(rb"http://app\.example\.com/\S*confirm-password-reset", text)
