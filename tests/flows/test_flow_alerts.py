"""deliver-alerts run for real in the Prefect harness: alerts written with the usage on a real
SQLite file reach a real SMTP server (aiosmtpd) and a real local webhook receiver (http.server),
once each, even when the receiver is down for the first runs."""

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from flow_helpers import PASSWORD, Inbox, usd
from ports import free_port

from core.accounts import Product, Tenant
from flows.alerts import DEDUP_HEADER, deliver_alerts
from flows.common import opened_ledger

WEBHOOK_TOKEN = "t0ken-in-the-url"


class Receiver:
    """A webhook receiver on a fixed port, started and stopped by the test."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.requests: list[tuple[dict[str, str], dict]] = []
        self.refusals_left = 0
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/{WEBHOOK_TOKEN}"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers["Content-Length"])
                body = json.loads(self.rfile.read(length))
                if receiver.refusals_left > 0:
                    receiver.refusals_left -= 1
                    self.send_response(503)
                else:
                    receiver.requests.append((dict(self.headers), body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """Not listening until the test starts it: a receiver that is down."""
    down = Receiver(free_port())
    try:
        yield down
    finally:
        down.stop()


def alert_states(settings) -> list[tuple]:
    path = settings.database_url.removeprefix("sqlite:///")
    with closing(sqlite3.connect(path)) as connection:
        return connection.execute(
            "SELECT subject, subject_id, threshold_percent, state, attempts,"
            " mailed_at IS NOT NULL, posted_at IS NOT NULL, last_error IS NOT NULL"
            " FROM alerts ORDER BY id"
        ).fetchall()


def ledger_label(settings) -> str:
    """The label of ann's open period (the month the test runs in)."""
    with opened_ledger(settings) as ledger:
        return ledger.user("ann").period_label


def seed_alerts(settings) -> None:
    """ann crosses 80 % of her $10; her tenant crosses 100 % of its $8 cap."""
    with opened_ledger(settings) as ledger:
        ledger.put_product(Product("basic", "Basic", usd(10)))
        ledger.put_tenant(Tenant("acme", "Acme", usd(8)))
        ledger.provision_user("ann@example.com", PASSWORD, "basic", "acme", "ann")
        ledger.log_usage("ann", "gpt-4o", "r1", 10, 20, usd("8.5"), None)


def test_alerts_survive_a_receiver_down_and_arrive_once(
    flow_settings, monkeypatch, receiver: Receiver, smtp_inbox: Inbox
):
    monkeypatch.setenv("ALERT_WEBHOOK_URL", receiver.url)
    seed_alerts(flow_settings)
    assert alert_states(flow_settings) == [
        ("user", "ann", 80, "pending", 0, 0, 0, 0),
        ("tenant", "acme", 80, "pending", 0, 0, 0, 0),
        ("tenant", "acme", 100, "pending", 0, 0, 0, 0),
    ]

    for _ in range(2):  # the receiver is down for hours: every run fails on it
        assert deliver_alerts(retry_delay_seconds=0) == {"delivered": 0, "failed": 3, "notices_mailed": 0, "notices_failed": 0}
    assert alert_states(flow_settings) == [
        ("user", "ann", 80, "pending", 2, 1, 0, 1),
        ("tenant", "acme", 80, "pending", 2, 1, 0, 1),
        ("tenant", "acme", 100, "pending", 2, 1, 0, 1),
    ]

    label = ledger_label(flow_settings)
    receiver.start()
    assert deliver_alerts(retry_delay_seconds=0) == {"delivered": 3, "failed": 0, "notices_mailed": 0, "notices_failed": 0}
    assert deliver_alerts(retry_delay_seconds=0) == {"delivered": 0, "failed": 0, "notices_mailed": 0, "notices_failed": 0}
    assert [state[3] for state in alert_states(flow_settings)] == ["delivered"] * 3

    # Each channel got each alert once: mail on the first run, the webhook when it came back.
    assert sorted((m["To"], m["Subject"]) for m in smtp_inbox.messages) == [
        ("admin@example.com", f"Tenant acme: budget 80% used ({label})"),
        ("admin@example.com", f"Tenant acme: budget used up ({label})"),
        ("ann@example.com", f"User ann: budget 80% used ({label})"),
    ]
    keys = [headers[DEDUP_HEADER] for headers, _ in receiver.requests]
    assert keys == ["cloudfreedom-alert-1", "cloudfreedom-alert-2", "cloudfreedom-alert-3"]
    _, first = receiver.requests[0]
    assert first["alert_id"] == 1
    assert (first["subject"], first["subject_id"], first["threshold_percent"]) == (
        "user",
        "ann",
        80,
    )
    assert (first["used"], first["limit"]) == ("8.5", "10")
    assert first["title"] == f"User ann: budget 80% used ({label})"


def test_without_any_channel_alerts_stay_pending(flow_settings, monkeypatch, smtp_inbox: Inbox):
    monkeypatch.delenv("SMTP_HOST")
    seed_alerts(flow_settings)
    assert deliver_alerts() == {"delivered": 0, "failed": 0, "notices_mailed": 0, "notices_failed": 0}
    assert {state[3] for state in alert_states(flow_settings)} == {"pending"}
    assert smtp_inbox.messages == []


def test_a_refusing_receiver_gets_the_alert_later_and_its_url_is_kept_nowhere(
    flow_settings, monkeypatch, receiver: Receiver, smtp_inbox: Inbox
):
    monkeypatch.setenv("ALERT_WEBHOOK_URL", receiver.url)
    monkeypatch.delenv("SMTP_HOST")
    seed_alerts(flow_settings)
    receiver.refusals_left = 9  # three alerts, each tried three times in the first run
    receiver.start()
    assert deliver_alerts(retry_delay_seconds=0) == {"delivered": 0, "failed": 3, "notices_mailed": 0, "notices_failed": 0}
    path = flow_settings.database_url.removeprefix("sqlite:///")
    with closing(sqlite3.connect(path)) as connection:
        errors = [row[0] for row in connection.execute("SELECT last_error FROM alerts")]
    assert errors == ["webhook: WebhookRefused: webhook answered HTTP 503"] * 3
    assert deliver_alerts(retry_delay_seconds=0) == {"delivered": 3, "failed": 0, "notices_mailed": 0, "notices_failed": 0}
    assert len(receiver.requests) == 3


def test_a_forced_reset_made_through_the_api_is_mailed_to_the_admin_once(
    flow_settings, smtp_inbox: Inbox
):
    """The API cannot mail; its forced reset leaves a notice in the store that this flow mails."""
    seed_alerts(flow_settings)
    with opened_ledger(flow_settings) as ledger:
        label = ledger.user("ann").period_label
        ledger.reset_budgets(label, force=True)  # what POST {"period", "force": true} calls
    first = deliver_alerts(retry_delay_seconds=0)
    assert (first["notices_mailed"], first["notices_failed"]) == (1, 0)
    [notice] = [m for m in smtp_inbox.messages if m["To"] == "admin@example.com" and "FORCED" in m["Subject"]]
    assert notice["Subject"] == f"Budget reset {label} was FORCED"
    assert "closed every open period (1 users)" in notice.get_payload(decode=True).decode()
    assert deliver_alerts(retry_delay_seconds=0)["notices_mailed"] == 0
