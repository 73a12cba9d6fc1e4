"""Provisioning's rule (core.provisioning): step order, detection of what exists, compensation.

The identity store here is ``MemoryIdentities``, an implementation of our own ``IdentityStore``
interface kept in a dict with switches to fail; the ledger is the real SQLite one. The
PocketBase adapter itself is tested against a real PocketBase in tests/pocketbase.
"""

from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
from core_helpers import PASSWORD

from core.accounts import Product
from core.errors import Duplicate, IdentityUnavailable, Invalid, Unavailable
from core.ledger import Ledger
from core.provisioning import Identity, Provisioner, ProvisionRequest


class MemoryIdentities:
    """``IdentityStore`` in a dict. ``fail_create``: ``"before"`` it lands or ``"after"``."""

    def __init__(self) -> None:
        self.records: dict[str, Identity] = {}
        self.passwords: dict[str, str] = {}
        self.calls: list[str] = []
        self.fail_create: str | None = None
        self.fail_delete = False
        self.fail_find = False
        self._next_id = 0

    def find_by_email(self, email: str) -> Identity | None:
        self.calls.append("find")
        if self.fail_find:
            raise IdentityUnavailable("down")
        matches = [r for r in self.records.values() if r.email.casefold() == email.casefold()]
        return matches[0] if matches else None

    def create(
        self, email: str, password: str, user_id: str, product_id: str, tenant_id: str
    ) -> Identity:
        self.calls.append("create")
        if self.fail_create == "before":
            raise IdentityUnavailable("down")
        self._next_id += 1
        record = Identity(f"rec{self._next_id}", email, user_id, product_id, tenant_id)
        self.records[record.record_id] = record
        self.passwords[record.record_id] = password
        if self.fail_create == "after":
            raise IdentityUnavailable("timed out after the record was written")
        return record

    def delete(self, record_id: str) -> None:
        self.calls.append("delete")
        if self.fail_delete:
            raise IdentityUnavailable("down")
        self.records.pop(record_id, None)


ADA = ProvisionRequest("ada@example.com", "basic", "t1", "ada")


@pytest.fixture
def identities() -> MemoryIdentities:
    return MemoryIdentities()


@pytest.fixture
def provisioner(ledger: Ledger, basic: Product, identities: MemoryIdentities) -> Provisioner:
    return Provisioner(ledger, identities)


REFUSE_USERS_SQLITE = (
    "CREATE TRIGGER refuse_users BEFORE INSERT ON users BEGIN SELECT RAISE(ABORT, 'no'); END",
)
REFUSE_USERS_POSTGRES = (
    "CREATE FUNCTION refuse_users() RETURNS trigger LANGUAGE plpgsql"
    " AS $$ BEGIN RAISE EXCEPTION 'no'; END $$",
    "CREATE TRIGGER refuse_users BEFORE INSERT ON users"
    " FOR EACH ROW EXECUTE FUNCTION refuse_users()",
)


@pytest.fixture
def refuse_new_users(raw, backend: str) -> Iterator[Callable[[], None]]:
    """Make the database refuse the ledger step (a failure after the identity step) until
    the returned function is called; the refusal never outlives the test (PostgreSQL schemas
    are reused)."""
    statements = REFUSE_USERS_SQLITE if backend == "sqlite" else REFUSE_USERS_POSTGRES
    drops = (
        ("DROP TRIGGER IF EXISTS refuse_users",)
        if backend == "sqlite"
        else (
            "DROP TRIGGER IF EXISTS refuse_users ON users",
            "DROP FUNCTION IF EXISTS refuse_users",
        )
    )

    def allow() -> None:
        for statement in drops:
            raw.execute(statement)

    for statement in statements:
        raw.execute(statement)
    try:
        yield allow
    finally:
        allow()


def test_the_record_comes_first_then_the_ledger_user(provisioner, identities, ledger):
    outcome = provisioner.provision(ADA, PASSWORD, repeat_is_done=False)
    assert (outcome.user_created, outcome.identity_created) == (True, True)
    assert identities.calls == ["find", "create"]
    [record] = identities.records.values()
    assert (record.email, record.user_id, record.product_id, record.tenant_id) == (
        "ada@example.com",
        "ada",
        "basic",
        "t1",
    )
    assert identities.passwords[record.record_id] == PASSWORD
    assert ledger.user("ada").email == "ada@example.com"


def test_a_generated_user_id_links_the_record_and_the_user(provisioner, identities, ledger):
    outcome = provisioner.provision(replace(ADA, user_id=None), PASSWORD, repeat_is_done=False)
    [record] = identities.records.values()
    assert record.user_id == outcome.user.id
    assert ledger.user(outcome.user.id).email == "ada@example.com"


def test_when_the_ledger_refuses_the_record_is_removed(
    provisioner, identities, ledger, refuse_new_users
):
    with pytest.raises(Unavailable):
        provisioner.provision(ADA, PASSWORD, repeat_is_done=False)
    assert identities.calls == ["find", "create", "delete"]
    assert identities.records == {}
    assert ledger.user_by_email("ada@example.com") is None


def test_a_record_left_by_a_failed_compensation_is_reported_then_adopted(
    provisioner, identities, ledger, refuse_new_users
):
    identities.fail_delete = True
    with pytest.raises(IdentityUnavailable) as raised:
        provisioner.provision(ADA, PASSWORD, repeat_is_done=False)
    [left] = identities.records.values()
    assert raised.value.details["record_id"] == left.record_id
    refuse_new_users()
    identities.fail_delete = False
    outcome = provisioner.provision(replace(ADA, user_id=None), PASSWORD, repeat_is_done=True)
    assert (outcome.user.id, outcome.user_created, outcome.identity_created) == ("ada", True, False)
    assert list(identities.records.values()) == [left]


def test_an_identity_store_down_creates_nothing(provisioner, identities, ledger):
    identities.fail_create = "before"
    with pytest.raises(IdentityUnavailable):
        provisioner.provision(ADA, PASSWORD, repeat_is_done=False)
    assert ledger.user_by_email("ada@example.com") is None
    assert identities.records == {}


def test_a_create_that_landed_before_failing_is_removed(provisioner, identities, ledger):
    identities.fail_create = "after"
    with pytest.raises(IdentityUnavailable):
        provisioner.provision(ADA, PASSWORD, repeat_is_done=False)
    assert identities.calls == ["find", "create", "find", "delete"]
    assert identities.records == {}
    assert ledger.user_by_email("ada@example.com") is None


def test_an_unknown_product_is_refused_before_the_identity_step(provisioner, identities):
    with pytest.raises(Invalid) as raised:
        provisioner.provision(replace(ADA, product_id="gold"), PASSWORD, repeat_is_done=False)
    assert raised.value.field == "product_id"
    assert "create" not in identities.calls


def test_the_api_mode_refuses_an_existing_user_before_the_identity_store(provisioner, identities):
    provisioner.provision(ADA, PASSWORD, repeat_is_done=False)
    identities.calls.clear()
    for request, field in (
        (replace(ADA, email="ADA@example.com", user_id="ada2"), "email"),
        (replace(ADA, email="other@example.com"), "user_id"),
    ):
        with pytest.raises(Duplicate) as raised:
            provisioner.provision(request, PASSWORD, repeat_is_done=False)
        assert raised.value.details["field"] == field
    assert identities.calls == []


def test_the_api_mode_refuses_an_email_taken_in_the_identity_store(provisioner, identities, ledger):
    identities.records["x"] = Identity("x", "Ada@Example.com", "", "", "")
    with pytest.raises(Duplicate) as raised:
        provisioner.provision(ADA, PASSWORD, repeat_is_done=False)
    assert raised.value.details["field"] == "email"
    assert ledger.user_by_email("ada@example.com") is None
    assert list(identities.records) == ["x"]


def test_the_flow_mode_repeated_creates_nothing(provisioner, identities, ledger):
    first = provisioner.provision(ADA, PASSWORD, repeat_is_done=True)
    again = provisioner.provision(ADA, "another password", repeat_is_done=True)
    without_id = provisioner.provision(replace(ADA, user_id=None), "x" * 8, repeat_is_done=True)
    assert (again.user_created, again.identity_created) == (False, False)
    assert again.user == first.user == without_id.user
    assert len(identities.records) == 1
    assert "create" not in identities.calls[2:]


def test_the_flow_mode_completes_a_missing_half(provisioner, identities, ledger):
    ledger.provision_user("ada@example.com", PASSWORD, "basic", "t1", "ada")
    outcome = provisioner.provision(ADA, PASSWORD, repeat_is_done=True)
    assert (outcome.user_created, outcome.identity_created) == (False, True)
    assert [r.user_id for r in identities.records.values()] == ["ada"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"product_id": "pro"}, "product_id"),
        ({"tenant_id": "t2"}, "tenant_id"),
        ({"user_id": "ada2"}, "email"),
        ({"email": "other@example.com"}, "user_id"),
    ],
)
def test_the_flow_mode_refuses_a_different_user_on_the_same_email_or_id(
    provisioner, identities, ledger, change, field
):
    ledger.put_product(Product("pro", "Pro", ledger.list_products()[0].monthly_budget))
    provisioner.provision(ADA, PASSWORD, repeat_is_done=True)
    with pytest.raises(Duplicate) as raised:
        provisioner.provision(replace(ADA, **change), PASSWORD, repeat_is_done=True)
    assert raised.value.details["field"] == field
    assert len(identities.records) == 1


def test_the_flow_mode_refuses_a_record_it_did_not_make(provisioner, identities, ledger):
    identities.records["x"] = Identity("x", "ada@example.com", "", "", "")
    with pytest.raises(Duplicate):
        provisioner.provision(ADA, PASSWORD, repeat_is_done=True)
    assert ledger.user_by_email("ada@example.com") is None


def test_without_an_identity_store_only_the_ledger_user_is_made(ledger, basic):
    outcome = Provisioner(ledger, None).provision(ADA, PASSWORD, repeat_is_done=False)
    assert (outcome.user_created, outcome.identity_created) == (True, False)
    with pytest.raises(Duplicate):
        Provisioner(ledger, None).provision(ADA, PASSWORD, repeat_is_done=False)
