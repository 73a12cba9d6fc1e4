"""The provision-user flow in the Prefect harness, against a real PocketBase and SMTP server.

Settings reach the flow through the environment, as they do in a deployment.
"""

import logging
import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import pytest
from flow_helpers import Inbox
from pocketbase_server import PocketBaseServer
from ports import free_port
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogHandler

from core.accounts import Product, Tenant
from core.errors import Duplicate, IdentityUnavailable, Invalid, NotFound, Unavailable
from core.money import money_from_input
from core.service import open_ledger
from core.settings import Settings
from flows.mail import MailUnreachable
from flows.provision import INVITE_SUBJECT, provision_user, resend_invite

EMAIL = "Ada@Example.com"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "flow.db"


@pytest.fixture
def environment(
    monkeypatch: pytest.MonkeyPatch,
    db_path: Path,
    pocketbase: PocketBaseServer,
    smtp_inbox: Inbox,
) -> Iterator[None]:
    """A ledger with the ``basic`` plan, the module's PocketBase (emptied) and SMTP server."""
    pocketbase.clear()
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{db_path}")
    for name, value in pocketbase.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("SMTP_PORT", str(smtp_inbox.port))
    monkeypatch.setenv("SMTP_SECURITY", "INSECURE")
    monkeypatch.setenv("MAIL_FROM", "billing@example.com")
    monkeypatch.setenv("ADMIN_EMAIL", "admin@example.com")
    monkeypatch.setenv("APP_URL", "https://app.example.com")
    store, ledger = open_ledger(Settings())
    try:
        ledger.put_product(Product("basic", "Basic", money_from_input(Decimal("10"))))
        ledger.put_tenant(Tenant("acme", "Acme", None))
    finally:
        store.close()
    yield


def ledger_user_id(email: str) -> str | None:
    store, ledger = open_ledger(Settings())
    try:
        user = ledger.user_by_email(email)
        return None if user is None else user.id
    finally:
        store.close()


def one_time_password(inbox: Inbox) -> str:
    [message] = [m for m in inbox.messages if m["Subject"] == INVITE_SUBJECT]
    assert message["To"].lower() == EMAIL.lower()
    body = message.get_payload(decode=True).decode()
    assert "Sign in at https://app.example.com with your email" in body
    found = re.search(r"One-time password: (\S+)", body)
    assert found is not None
    return found.group(1)


def admin_notices(inbox: Inbox) -> list[str]:
    return [
        m.get_payload(decode=True).decode()
        for m in inbox.messages
        if m["To"] == "admin@example.com"
    ]


def artifacts_of_run(flow_run_id: UUID) -> list:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


def stored_text_of_run(flow_run_id: UUID) -> str:
    """Everything Prefect keeps about a run: the run, its task runs and its logs, as JSON."""
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
    parts = [run.model_dump_json()] + [t.model_dump_json() for t in tasks]
    return "\n".join(parts + [log.model_dump_json() for log in logs])


def logged_by_the_service(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured log line but the test SMTP server's (aiosmtpd logs what it receives)."""
    return "\n".join(
        record.getMessage() for record in caplog.records if not record.name.startswith("mail.")
    )


@pytest.mark.usefixtures("environment")
def test_the_flow_creates_both_halves_mails_the_password_and_a_rerun_creates_nothing(
    pocketbase, smtp_inbox, caplog
):
    caplog.set_level(logging.DEBUG)
    state = provision_user(
        email=EMAIL, product_id="basic", tenant_id="acme", user_id="ada", return_state=True
    )
    result = state.result()
    assert result == {
        "user_id": "ada",
        "email": EMAIL,
        "product_id": "basic",
        "tenant_id": "acme",
        "user_created": True,
        "identity_created": True,
        "invited": True,
    }
    [record] = pocketbase.records()
    assert (record["email"], record["user_id"], record["product_id"], record["tenant_id"]) == (
        EMAIL,
        "ada",
        "basic",
        "acme",
    )
    password = one_time_password(smtp_inbox)
    assert pocketbase.can_log_in(EMAIL, password)
    assert ledger_user_id(EMAIL) == "ada"

    run = stored_text_of_run(state.state_details.flow_run_id)
    assert (
        "provisioned: user_id=ada email=Ada@Example.com tenant_id=acme product_id=basic"
        " invite_sent=True" in run
    )
    [artifact] = artifacts_of_run(state.state_details.flow_run_id)
    assert artifact.key == "provision-user"
    assert artifact.type == "table"
    assert '"user_id": "ada"' in str(artifact.data) or "'user_id': 'ada'" in str(artifact.data)
    assert password not in str(artifact.data)
    assert EMAIL in run  # the parameters and logs are there ...
    assert password not in run  # ... the password is not
    assert password not in str(result)
    assert password not in logged_by_the_service(caplog)

    smtp_inbox.messages.clear()
    again = provision_user(email=EMAIL.lower(), product_id="basic", tenant_id="acme")
    assert again["user_id"] == "ada"
    assert (again["user_created"], again["identity_created"], again["invited"]) == (
        False,
        False,
        False,
    )
    assert [r["id"] for r in pocketbase.records()] == [record["id"]]
    assert smtp_inbox.messages == []
    assert pocketbase.can_log_in(EMAIL, password)  # the password was not changed


@pytest.mark.usefixtures("environment")
def test_a_different_user_on_the_same_email_is_a_conflict_that_changes_nothing(pocketbase):
    provision_user(email=EMAIL, product_id="basic", user_id="ada", send_invite=False)
    state = provision_user(email=EMAIL, product_id="basic", user_id="bob", return_state=True)
    assert state.is_failed()
    with pytest.raises(Duplicate):
        state.result()
    assert ledger_user_id(EMAIL) == "ada"
    assert len(pocketbase.records()) == 1


@pytest.mark.usefixtures("environment")
def test_pocketbase_down_leaves_no_ledger_user_and_a_rerun_finishes(pocketbase, smtp_inbox):
    pocketbase.stop()
    try:
        state = provision_user(email=EMAIL, product_id="basic", return_state=True)
    finally:
        pocketbase.start()
    assert state.is_failed()
    with pytest.raises(IdentityUnavailable):
        state.result()
    assert ledger_user_id(EMAIL) is None
    assert pocketbase.records() == []
    [notice] = admin_notices(smtp_inbox)
    assert "PocketBase did not answer" in notice
    smtp_inbox.messages.clear()

    finished = provision_user(email=EMAIL, product_id="basic")
    assert finished["user_created"] and finished["identity_created"] and finished["invited"]
    assert pocketbase.can_log_in(EMAIL, one_time_password(smtp_inbox))


@pytest.mark.usefixtures("environment")
def test_a_ledger_failure_after_the_record_leaves_no_record(pocketbase, smtp_inbox, db_path):
    with closing(sqlite3.connect(db_path)) as raw:
        raw.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON users BEGIN SELECT RAISE(ABORT, 'no'); END"
        )
    state = provision_user(email=EMAIL, product_id="basic", return_state=True)
    assert state.is_failed()
    with pytest.raises(Unavailable):
        state.result()
    assert pocketbase.records() == []
    assert ledger_user_id(EMAIL) is None
    assert [m["To"] for m in smtp_inbox.messages] == ["admin@example.com"]  # the failure notice


@pytest.mark.usefixtures("environment")
def test_without_pocketbase_the_ledger_user_gets_the_invite(monkeypatch, pocketbase, smtp_inbox):
    monkeypatch.delenv("POCKETBASE_URL")
    result = provision_user(email=EMAIL, product_id="basic")
    assert (result["user_created"], result["identity_created"], result["invited"]) == (
        True,
        False,
        True,
    )
    assert one_time_password(smtp_inbox)
    assert pocketbase.records() == []


@pytest.mark.usefixtures("environment")
def test_an_invite_without_smtp_is_refused_before_anything_is_created(monkeypatch, pocketbase):
    monkeypatch.delenv("SMTP_HOST")
    state = provision_user(email=EMAIL, product_id="basic", return_state=True)
    assert state.is_failed()
    assert ledger_user_id(EMAIL) is None
    assert pocketbase.records() == []


@pytest.mark.usefixtures("environment")
@pytest.mark.parametrize(
    "parameters",
    [{"user_id": "a\x00b"}, {"tenant_id": "t\x00"}, {"email": "a\x00@example.com"}],
    ids=["user id", "tenant id", "email"],
)
def test_nul_in_a_parameter_is_refused_before_anything_is_created(parameters, pocketbase):
    """PostgreSQL cannot store U+0000: the flow's parameters refuse it, as the API's bodies do."""
    arguments = {"email": EMAIL, "product_id": "basic", "send_invite": False, **parameters}
    state = provision_user(**arguments, return_state=True)
    assert state.is_failed()
    assert ledger_user_id(arguments["email"]) is None
    assert pocketbase.records() == []


@pytest.mark.usefixtures("environment")
def test_smtp_down_refuses_before_anything_is_created_naming_the_server(
    monkeypatch, pocketbase, smtp_inbox
):
    closed_port = free_port()
    monkeypatch.setenv("SMTP_PORT", str(closed_port))
    state = provision_user(email=EMAIL, product_id="basic", return_state=True)
    assert state.is_failed()
    with pytest.raises(MailUnreachable, match=f"127.0.0.1:{closed_port}"):
        state.result()
    assert ledger_user_id(EMAIL) is None
    assert pocketbase.records() == []


@pytest.mark.usefixtures("environment")
def test_an_unknown_product_or_tenant_is_named_and_the_admin_is_told(pocketbase, smtp_inbox):
    state = provision_user(email=EMAIL, product_id="pro-mnthly", return_state=True)
    assert state.is_failed()
    with pytest.raises(Invalid, match="unknown product 'pro-mnthly'"):
        state.result()
    [notice] = admin_notices(smtp_inbox)
    assert "provision-user" in notice and "unknown product 'pro-mnthly'" in notice

    state = provision_user(
        email=EMAIL, product_id="basic", tenant_id="acme-crop", return_state=True
    )
    assert state.is_failed()
    with pytest.raises(Invalid, match="unknown tenant 'acme-crop'"):
        state.result()
    assert ledger_user_id(EMAIL) is None
    assert pocketbase.records() == []

    made = provision_user(
        email=EMAIL, product_id="basic", tenant_id="acme-crop", create_tenant=True
    )
    assert made["tenant_id"] == "acme-crop" and made["user_created"]


@pytest.mark.usefixtures("environment")
def test_resend_invite_sets_a_fresh_password_and_mails_it(pocketbase, smtp_inbox):
    provision_user(email=EMAIL, product_id="basic", user_id="ada")
    first = one_time_password(smtp_inbox)
    smtp_inbox.messages.clear()

    state = resend_invite(email=EMAIL.lower(), return_state=True)
    result = state.result()
    assert result == {
        "user_id": "ada",
        "email": EMAIL.lower(),
        "product_id": "basic",
        "tenant_id": "default",
        "invited": True,
    }
    second = one_time_password(smtp_inbox)
    assert second != first
    assert pocketbase.can_log_in(EMAIL, second)
    assert not pocketbase.can_log_in(EMAIL, first)
    run = stored_text_of_run(state.state_details.flow_run_id)
    assert "invite resent: user_id=ada" in run
    assert second not in run
    [artifact] = artifacts_of_run(state.state_details.flow_run_id)
    assert artifact.key == "resend-invite" and second not in str(artifact.data)


@pytest.mark.usefixtures("environment")
def test_resend_invite_to_an_unknown_email_names_it_and_changes_nothing(smtp_inbox):
    state = resend_invite(email="nobody@example.com", return_state=True)
    assert state.is_failed()
    with pytest.raises(NotFound, match="no user with email 'nobody@example.com'"):
        state.result()
    assert not [m for m in smtp_inbox.messages if m["Subject"] == INVITE_SUBJECT]
