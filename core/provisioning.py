"""Provisioning a user into the ledger and the identity store (PocketBase): one rule, two callers.

Step order: the identity record first, then the ledger user. If the ledger refuses, the record
this call created is deleted, so neither half is left alone; what already existed is never
deleted. A create the identity store may have applied before failing (a timeout) is looked up
and removed too. A crash between the two steps can leave a record without its ledger user; a
repeated provisioning adopts that record (same email, user, plan and tenant) and finishes.

An unknown tenant is created with the user only when the request says ``create_tenant``: the
flow asks for it explicitly, so a mistyped tenant id is refused (naming it) instead of becoming a
new tenant; the API's requests default to ``create_tenant`` (its original contract: a tenant is
created on first use) and a client may send ``false`` to have the same check. The tenant
``default`` (every request's default) is always created on first use.

Two modes: the API's (``repeat_is_done=False``: an existing email or id is a ``Duplicate``, as
the contract says) and the flow's (``repeat_is_done=True``: the same user again is done, a
different one with the same email or id is a ``Duplicate`` naming the field that differs).
"""

import logging
from dataclasses import dataclass
from typing import Protocol

from core.accounts import UserView
from core.errors import Duplicate, IdentityUnavailable, Invalid
from core.ledger import Ledger, new_user_id

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Identity:
    """An auth record in the identity store, as far as provisioning reads it."""

    record_id: str
    email: str
    user_id: str
    product_id: str
    tenant_id: str


class IdentityStore(Protocol):
    """Where users log in (PocketBase). Each method raises ``IdentityUnavailable`` on failure.

    ``create`` raises ``Duplicate`` (field ``email``) when the email is taken and ``Invalid``
    naming the field the store refused (``email``, ``password``).
    """

    def find_by_email(self, email: str) -> Identity | None:
        """The record with this email, compared case-insensitively."""

    def create(
        self, email: str, password: str, user_id: str, product_id: str, tenant_id: str
    ) -> Identity: ...

    def delete(self, record_id: str) -> None:
        """Delete a record; a record already gone is not an error."""


@dataclass(frozen=True, slots=True)
class ProvisionRequest:
    email: str
    product_id: str
    tenant_id: str
    user_id: str | None
    create_tenant: bool = True


DEFAULT_TENANT_ID = "default"


@dataclass(frozen=True, slots=True)
class ProvisionOutcome:
    user: UserView
    user_created: bool
    identity_created: bool


class Provisioner:
    """Provisions users into a ledger and, when there is one, an identity store."""

    def __init__(self, ledger: Ledger, identities: IdentityStore | None) -> None:
        self._ledger = ledger
        self._identities = identities

    def provision(
        self, request: ProvisionRequest, password: str, *, repeat_is_done: bool
    ) -> ProvisionOutcome:
        """Create what is missing, ledger user and identity record, or leave nothing behind."""
        existing = self._existing_user(request)
        if existing is not None and not repeat_is_done:
            raise _duplicate_user(existing, request)
        found = None if self._identities is None else self._identities.find_by_email(request.email)
        if found is not None and not repeat_is_done:
            raise Duplicate("a PocketBase record with this email exists", field="email")
        user_id = _resolve_user_id(request, existing, found)
        if existing is not None:
            _require_same_user(existing, request, user_id)
        if found is not None:
            _require_same_identity(found, request, user_id)
        if existing is None:
            self._require_known_plan_and_tenant(request)

        created = None
        if self._identities is not None and found is None:
            created = self._create_identity(self._identities, request, password, user_id)
        if existing is not None:
            return ProvisionOutcome(existing, False, created is not None)
        try:
            user = self._ledger.provision_user(
                request.email, password, request.product_id, request.tenant_id, user_id
            )
        except Exception as error:
            if created is not None:
                assert self._identities is not None
                _compensate(self._identities, created, error)
            raise
        return ProvisionOutcome(user, True, created is not None)

    def _require_known_plan_and_tenant(self, request: ProvisionRequest) -> None:
        """Refuse an unknown product, and an unknown tenant unless ``create_tenant``."""
        if request.product_id not in {product.id for product in self._ledger.list_products()}:
            raise Invalid(f"unknown product {request.product_id!r}", field="product_id")
        if (
            not request.create_tenant
            and request.tenant_id != DEFAULT_TENANT_ID
            and not self._ledger.tenant_exists(request.tenant_id)
        ):
            raise Invalid(
                f"unknown tenant {request.tenant_id!r}: create it first, or set create_tenant",
                field="tenant_id",
            )

    def _existing_user(self, request: ProvisionRequest) -> UserView | None:
        """The ledger user holding this id or, failing that, this email."""
        if request.user_id is not None:
            by_id = self._ledger.find_user(request.user_id)
            if by_id is not None:
                return by_id
        return self._ledger.user_by_email(request.email)

    def _create_identity(
        self, identities: IdentityStore, request: ProvisionRequest, password: str, user_id: str
    ) -> Identity:
        try:
            return identities.create(
                request.email, password, user_id, request.product_id, request.tenant_id
            )
        except IdentityUnavailable:
            _remove_if_applied(identities, request.email, user_id)
            raise


def _resolve_user_id(
    request: ProvisionRequest, existing: UserView | None, found: Identity | None
) -> str:
    """The id asked for, else the one already provisioned (ledger, then identity), else new."""
    if request.user_id is not None:
        return request.user_id
    if existing is not None:
        return existing.id
    if found is not None and found.user_id:
        return found.user_id
    return new_user_id()


def _duplicate_user(existing: UserView, request: ProvisionRequest) -> Duplicate:
    if existing.id == request.user_id:
        return Duplicate("a user with this id exists", field="user_id")
    return Duplicate("a user with this email exists", field="email")


def _require_same_user(existing: UserView, request: ProvisionRequest, user_id: str) -> None:
    if existing.id != user_id:
        raise Duplicate("a user with this email exists with another id", field="email")
    if existing.email.casefold() != request.email.casefold():
        raise Duplicate("a user with this id exists with another email", field="user_id")
    for field, have, want in (
        ("product_id", existing.product_id, request.product_id),
        ("tenant_id", existing.tenant_id, request.tenant_id),
    ):
        if have != want:
            raise Duplicate(f"the user exists with another {field}", field=field)


def _require_same_identity(found: Identity, request: ProvisionRequest, user_id: str) -> None:
    for field, have, want in (
        ("user_id", found.user_id, user_id),
        ("product_id", found.product_id, request.product_id),
        ("tenant_id", found.tenant_id, request.tenant_id),
    ):
        if have != want:
            raise Duplicate(f"a PocketBase record with this email has another {field}", field=field)


def _compensate(identities: IdentityStore, created: Identity, cause: Exception) -> None:
    """Undo the identity step after the ledger refused; if that fails, say what is left."""
    try:
        identities.delete(created.record_id)
    except IdentityUnavailable as error:
        log.error(
            "the ledger refused user %s and its PocketBase record %s could not be removed: %s",
            created.user_id,
            created.record_id,
            error.message,
        )
        raise IdentityUnavailable(
            f"the ledger refused the user ({cause}) and PocketBase record {created.record_id}"
            " could not be removed; provisioning the same user again adopts it",
            record_id=created.record_id,
        ) from cause


def _remove_if_applied(identities: IdentityStore, email: str, user_id: str) -> None:
    """After a failed create (a timeout may hide a success), remove the record if it landed."""
    try:
        landed = identities.find_by_email(email)
        if landed is not None and landed.user_id == user_id:
            identities.delete(landed.record_id)
    except IdentityUnavailable as error:
        log.warning(
            "could not check whether PocketBase kept a record for user %s: %s",
            user_id,
            error.message,
        )
