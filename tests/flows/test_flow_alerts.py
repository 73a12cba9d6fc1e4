"""deliver-alerts run for real in the Prefect harness: alerts written with the usage on a real
SQLite file reach a real SMTP server (aiosmtpd) and a real local webhook receiver (http.server),
once each, even when the receiver or the SMTP server is down for the first runs; a run with a
channel down ends Failed and tells the admin through the channel that works."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from uuid import UUID

import pytest
from aiosmtpd.controller import Controller
from flow_helpers import PASSWORD, Inbox, usd
from ports import free_port
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.settings import PREFECT_API_URL

from core.accounts import Product, Tenant
from flows.alerts import DEDUP_HEADER, ChannelsDown, deliver_alerts
from flows.common import opened_ledger

WEBHOOK_TOKEN = "t0ken-in-the-url"
# A watcher process imports Prefect (~5 s on a busy 2-core machine), then polls every second.
WATCH_WAIT_SECONDS_MAX = 120


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


def alert_mails(inbox: Inbox) -> list[tuple[str, str]]:
    """(To, Subject) of every alert mailed, sorted; failure notices left out."""
    return sorted((m["To"], m["Subject"]) for m in inbox.messages if "Flow run" not in m["Subject"])


def failure_notices(inbox: Inbox) -> list[str]:
    return [m["Subject"] for m in inbox.messages if "Flow run" in m["Subject"]]


def delivered_only(count: int) -> dict[str, int]:
    """A delivery run's outcome when ``count`` alerts went out and nothing failed or was mailed
    to the admin."""
    return {"delivered": count, "failed": 0, "notices_mailed": 0, "notices_failed": 0}


def task_names_of_run(flow_run_id: UUID) -> list[str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return sorted(run.name.rsplit("-", 1)[0] for run in runs)


def test_a_webhook_down_fails_the_run_and_its_alerts_arrive_once_when_it_is_back(
    flow_settings, monkeypatch, receiver: Receiver, smtp_inbox: Inbox
):
    monkeypatch.setenv("ALERT_WEBHOOK_URL", receiver.url)
    seed_alerts(flow_settings)
    assert alert_states(flow_settings) == [
        ("user", "ann", 80, "pending", 0, 0, 0, 0),
        ("tenant", "acme", 80, "pending", 0, 0, 0, 0),
        ("tenant", "acme", 100, "pending", 0, 0, 0, 0),
    ]

    for _ in range(2):  # the receiver is down for hours: every run fails on it, loudly
        state = deliver_alerts(retry_delay_seconds=0, return_state=True)
        assert state.is_failed()
        with pytest.raises(ChannelsDown, match="ALERT_WEBHOOK_URL is down"):
            state.result()
        # tried once for the first alert, never retried, not tried for the others
        assert task_names_of_run(state.state_details.flow_run_id).count("post-alert") == 1
    # The first alert was tried in both runs; the others were mailed in the first run, then
    # waited untouched while the webhook they still needed was down.
    assert alert_states(flow_settings) == [
        ("user", "ann", 80, "pending", 2, 1, 0, 1),
        ("tenant", "acme", 80, "pending", 1, 1, 0, 1),
        ("tenant", "acme", 100, "pending", 1, 1, 0, 1),
    ]
    assert len(failure_notices(smtp_inbox)) == 2  # mail still works: the admin is told by mail

    label = ledger_label(flow_settings)
    receiver.start()
    assert deliver_alerts(retry_delay_seconds=0) == delivered_only(3)
    assert deliver_alerts(retry_delay_seconds=0) == delivered_only(0)
    assert [state[3] for state in alert_states(flow_settings)] == ["delivered"] * 3

    # Each channel got each alert once: mail on the first run, the webhook when it came back.
    assert alert_mails(smtp_inbox) == [
        ("admin@example.com", f"Tenant acme: budget 80% used ({label})"),
        ("admin@example.com", f"Tenant acme: budget used up ({label})"),
        ("ann@example.com", f"You have used 80% of your budget for {label}"),
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
    assert first["title"] == f"You have used 80% of your budget for {label}"


def test_smtp_down_fails_the_run_tells_the_admin_by_webhook_and_mails_each_alert_once_later(
    flow_settings, monkeypatch, receiver: Receiver
):
    """The real SMTP server is down (nothing listens on its port), then up."""
    inbox = Inbox(free_port())
    monkeypatch.setenv("SMTP_PORT", str(inbox.port))
    monkeypatch.setenv("ALERT_WEBHOOK_URL", receiver.url)
    receiver.start()
    seed_alerts(flow_settings)
    with opened_ledger(flow_settings) as ledger:
        ledger.reset_budgets(ledger.user("ann").period_label, force=True)  # an admin notice

    state = deliver_alerts(retry_delay_seconds=0, return_state=True)
    assert state.is_failed()
    with pytest.raises(ChannelsDown, match=f"SMTP server 127.0.0.1:{inbox.port} is down"):
        state.result()
    # Mail was tried once (the admin notice), never retried, and not for any alert.
    names = task_names_of_run(state.state_details.flow_run_id)
    assert names.count("mail-admin") == 1 and "mail-alert" not in names
    assert names.count("post-alert") == 3
    # The failure notice went out through the channel that works: the webhook.
    notices = [body for _, body in receiver.requests if body.get("kind") == "flow_run_failed"]
    assert len(notices) == 1
    assert f"127.0.0.1:{inbox.port}" in notices[0]["text"]
    assert [row[3] for row in alert_states(flow_settings)] == ["pending"] * 3

    controller = Controller(inbox, hostname="127.0.0.1", port=inbox.port)
    controller.start()
    try:
        assert deliver_alerts(retry_delay_seconds=0)["delivered"] == 3
        assert deliver_alerts(retry_delay_seconds=0)["delivered"] == 0
    finally:
        controller.stop()
    label = ledger_label(flow_settings)
    assert alert_mails(inbox) == [
        ("admin@example.com", f"Budget reset {label} was FORCED"),
        ("admin@example.com", f"Tenant acme: budget 80% used ({label})"),
        ("admin@example.com", f"Tenant acme: budget used up ({label})"),
        ("ann@example.com", f"You have used 80% of your budget for {label}"),
    ]
    alerts_posted = [body["alert_id"] for _, body in receiver.requests if "alert_id" in body]
    assert alerts_posted == [1, 2, 3]  # each once, in the first run


def test_without_any_channel_alerts_stay_pending(flow_settings, monkeypatch, smtp_inbox: Inbox):
    monkeypatch.delenv("SMTP_HOST")
    seed_alerts(flow_settings)
    assert deliver_alerts() == delivered_only(0)
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
    refused = deliver_alerts(retry_delay_seconds=0, return_state=True)
    assert refused.is_failed()
    with pytest.raises(ChannelsDown, match="3 alerts and 0 admin notices stay pending"):
        refused.result()
    assert receiver.refusals_left == 0
    path = flow_settings.database_url.removeprefix("sqlite:///")
    with closing(sqlite3.connect(path)) as connection:
        errors = [row[0] for row in connection.execute("SELECT last_error FROM alerts")]
    assert errors == ["webhook: WebhookRefused: webhook answered HTTP 503"] * 3
    assert deliver_alerts(retry_delay_seconds=0) == delivered_only(3)
    assert [body["alert_id"] for _, body in receiver.requests if "alert_id" in body] == [1, 2, 3]
    # Without SMTP, the first run's failure notice went to the webhook.
    assert [body.get("kind") for _, body in receiver.requests if "alert_id" not in body] == [
        "flow_run_failed"
    ]


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
    [notice] = [
        m
        for m in smtp_inbox.messages
        if m["To"] == "admin@example.com" and "FORCED" in m["Subject"]
    ]
    assert notice["Subject"] == f"Budget reset {label} was FORCED"
    assert "closed every open period (1 users)" in notice.get_payload(decode=True).decode()
    assert deliver_alerts(retry_delay_seconds=0)["notices_mailed"] == 0


def test_billing_alerts_watch_delivers_what_arrives_and_stops_on_sigterm(
    flow_settings, smtp_inbox: Inbox
):
    """The long-running watcher, a real process on the harness's Prefect API."""
    seed_alerts(flow_settings)
    label = ledger_label(flow_settings)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "alerts", "watch", "--poll-seconds", "1"],
        env=os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value()},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + WATCH_WAIT_SECONDS_MAX
        delivered = ["delivered"] * 3
        # The watcher marks an alert delivered after the SMTP server took its mail, so the
        # inbox may hold the third mail a moment before the outbox says so.
        while time.monotonic() < deadline and (
            len(alert_mails(smtp_inbox)) < 3
            or [state[3] for state in alert_states(flow_settings)] != delivered
        ):
            assert watcher.poll() is None, watcher.communicate()
            time.sleep(0.2)
        assert [state[3] for state in alert_states(flow_settings)] == delivered
    finally:
        watcher.send_signal(signal.SIGTERM)
        _, stderr = watcher.communicate(timeout=WATCH_WAIT_SECONDS_MAX)
    assert watcher.returncode == 0, stderr
    assert ("ann@example.com", f"You have used 80% of your budget for {label}") in alert_mails(
        smtp_inbox
    )
    assert len(alert_mails(smtp_inbox)) == 3  # each once, though the watcher kept polling
    assert "stopped watching the alert outbox" in stderr
