"""PocketBase (0.23+ API) over httpx: the identity store of provisioning and its schema.

Superuser login (``_superusers/auth-with-password``), the records API of one auth collection,
and the collections API for ``billing pocketbase init``. Lookups, logins and deletes are retried
(bounded); a create or a schema change is sent once, since it is not idempotent: its failure
goes to ``core.provisioning``'s compensation. Passwords travel only in request bodies and are
never logged, put in an error or returned.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import SecretStr

from core.errors import ConfigurationError, Duplicate, IdentityUnavailable, Invalid
from core.provisioning import Identity
from core.settings import Settings

log = logging.getLogger(__name__)

ATTEMPTS_MAX = 3
RETRY_DELAYS_SECONDS = (0.2, 1.0)
FIELD_LENGTH_MAX = 256
# The fields provisioning writes besides the auth collection's own email and password.
BILLING_FIELDS = ("user_id", "product_id", "tenant_id")
# The name PocketBase's own mails carry (its default is "Acme": "Reset your Acme password").
APP_NAME = "CloudFreedom"


def open_identity_store(settings: Settings) -> "PocketBase | None":
    """The PocketBase adapter when ``POCKETBASE_URL`` is set (and not empty), else None."""
    if not settings.pocketbase_url:
        return None
    if settings.pocketbase_admin_email is None or settings.pocketbase_admin_password is None:
        raise ConfigurationError(
            "POCKETBASE_URL is set: POCKETBASE_ADMIN_EMAIL and POCKETBASE_ADMIN_PASSWORD are needed"
        )
    return PocketBase(
        settings.pocketbase_url,
        settings.pocketbase_admin_email,
        settings.pocketbase_admin_password,
        settings.pocketbase_collection,
        settings.pocketbase_timeout_seconds,
    )


class PocketBase:
    """One PocketBase server and one auth collection, reached as a superuser."""

    def __init__(
        self,
        base_url: str,
        admin_email: str,
        admin_password: SecretStr,
        collection: str,
        timeout_seconds: float,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        assert timeout_seconds > 0
        self._client = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_seconds)
        self._admin_email = admin_email
        self._admin_password = admin_password
        self._collection = collection
        self._records = f"/api/collections/{collection}/records"
        self._sleep = sleep
        self._token: str | None = None

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "PocketBase":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- the identity store (core.provisioning.IdentityStore) ------------------------------

    def find_by_email(self, email: str) -> Identity | None:
        params = {
            "filter": f"email:lower = '{_quote(email.lower())}'",
            "perPage": "1",
            "skipTotal": "1",
        }
        response = self._request("GET", self._records, params=params, idempotent=True)
        if response.status_code != 200:
            raise _failure("the record lookup", response)
        items = response.json().get("items", [])
        return _identity(items[0]) if items else None

    def create(
        self, email: str, password: str, user_id: str, product_id: str, tenant_id: str
    ) -> Identity:
        body = {
            "email": email,
            "password": password,
            "passwordConfirm": password,
            "user_id": user_id,
            "product_id": product_id,
            "tenant_id": tenant_id,
        }
        response = self._request("POST", self._records, body=body, idempotent=False)
        if response.status_code == 400:
            raise _refusal(response)
        if response.status_code != 200:
            raise _failure("the record create", response)
        record = response.json()
        if any(field not in record for field in BILLING_FIELDS):
            self.delete(record["id"])
            raise IdentityUnavailable(
                f"collection {self._collection} lacks the fields {', '.join(BILLING_FIELDS)}:"
                " run `billing pocketbase init`"
            )
        identity = _identity(record)
        log.info("created PocketBase record %s for user %s", identity.record_id, user_id)
        return identity

    def set_password(self, record_id: str, password: str) -> None:
        """Set a record's password (a superuser needs no old password); the same password
        twice is the same record, so it is retried like a lookup."""
        body = {"password": password, "passwordConfirm": password}
        path = f"{self._records}/{record_id}"
        response = self._request("PATCH", path, body=body, idempotent=True)
        if response.status_code == 400:
            raise _refusal(response)
        if response.status_code != 200:
            raise _failure("the password change", response)
        log.info("set a new password on PocketBase record %s", record_id)

    def delete(self, record_id: str) -> None:
        response = self._request("DELETE", f"{self._records}/{record_id}", idempotent=True)
        if response.status_code not in (204, 404):
            raise _failure("the record delete", response)
        log.info("deleted PocketBase record %s", record_id)

    # -- schema ----------------------------------------------------------------------------

    def ensure_fields(self) -> list[str]:
        """Create the auth collection or add the billing fields it lacks; the names added."""
        path = f"/api/collections/{self._collection}"
        response = self._request("GET", path, idempotent=True)
        if response.status_code == 404:
            body = {
                "name": self._collection,
                "type": "auth",
                "fields": _text_fields(BILLING_FIELDS),
            }
            created = self._request("POST", "/api/collections", body=body, idempotent=False)
            if created.status_code != 200:
                raise _failure("the collection create", created)
            return list(BILLING_FIELDS)
        if response.status_code != 200:
            raise _failure("the collection read", response)
        collection = response.json()
        if collection.get("type") != "auth":
            raise ConfigurationError(
                f"POCKETBASE_COLLECTION: {self._collection} is a {collection.get('type')}"
                " collection, not an auth collection"
            )
        fields = collection["fields"]
        have = {field["name"]: field for field in fields}
        for name in BILLING_FIELDS:
            if name in have and have[name]["type"] != "text":
                raise ConfigurationError(
                    f"field {name} of {self._collection} is {have[name]['type']}, not text"
                )
        missing = [name for name in BILLING_FIELDS if name not in have]
        if not missing:
            return []
        body = {"fields": [*fields, *_text_fields(missing)]}
        updated = self._request("PATCH", path, body=body, idempotent=False)
        if updated.status_code != 200:
            raise _failure("the collection update", updated)
        return missing

    def configure_mail(self, mail: "PocketBaseMail") -> None:
        """Point PocketBase's own mail (password resets, verification) at ``mail``. Sent whole
        every time: PocketBase never returns the SMTP password, so a read cannot tell whether
        it is already the one wanted."""
        body = mail.settings_patch()
        response = self._request("PATCH", "/api/settings", body=body, idempotent=True)
        if response.status_code != 200:
            raise _failure("the settings update", response)

    # -- transport -------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        idempotent: bool,
    ) -> httpx.Response:
        """One call as a superuser; retried only when ``idempotent`` (transport errors, 5xx)."""
        attempts = ATTEMPTS_MAX if idempotent else 1
        for attempt in range(attempts):
            last = attempt + 1 == attempts
            try:
                response = self._authorized(method, path, body, params)
            except httpx.TransportError as error:
                if last:
                    raise IdentityUnavailable(
                        f"PocketBase did not answer {method} {path}: {type(error).__name__}"
                    ) from None
            else:
                if response.status_code < 500 or last:
                    return response
            self._sleep(RETRY_DELAYS_SECONDS[min(attempt, len(RETRY_DELAYS_SECONDS) - 1)])
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _authorized(
        self, method: str, path: str, body: dict[str, Any] | None, params: dict[str, str] | None
    ) -> httpx.Response:
        """Send with the superuser token; a 401 (expired token) logs in again once and resends."""
        if self._token is None:
            self._token = self._login()
        response = self._send(method, path, body, params)
        if response.status_code == 401:
            self._token = self._login()
            response = self._send(method, path, body, params)
        return response

    def _send(
        self, method: str, path: str, body: dict[str, Any] | None, params: dict[str, str] | None
    ) -> httpx.Response:
        assert self._token is not None
        headers = {"Authorization": self._token}
        return self._client.request(method, path, json=body, params=params, headers=headers)

    def _login(self) -> str:
        body = {"identity": self._admin_email, "password": self._admin_password.get_secret_value()}
        response = self._client.post("/api/collections/_superusers/auth-with-password", json=body)
        if response.status_code != 200:
            raise IdentityUnavailable(
                f"PocketBase refused the superuser login ({response.status_code}): check"
                " POCKETBASE_ADMIN_EMAIL and POCKETBASE_ADMIN_PASSWORD"
            )
        return response.json()["token"]


@dataclass(frozen=True)
class PocketBaseMail:
    """The SMTP server, sender and public URL PocketBase's own mails use."""

    host: str
    port: int
    security: str
    username: str | None
    password: str | None = field(repr=False)
    sender: str
    app_url: str | None

    def settings_patch(self) -> dict[str, dict[str, Any]]:
        """The body of ``PATCH /api/settings``. PocketBase's ``tls`` is TLS from the first byte
        (``SMTP_SECURITY=SSL``); without it, it upgrades by STARTTLS when the server offers it."""
        smtp: dict[str, Any] = {
            "enabled": True,
            "host": self.host,
            "port": self.port,
            "tls": self.security == "SSL",
            "username": self.username or "",
            "password": self.password or "",
        }
        meta: dict[str, Any] = {
            "appName": APP_NAME,
            "senderName": APP_NAME,
            "senderAddress": self.sender,
        }
        if self.app_url:
            meta["appURL"] = self.app_url
        return {"smtp": smtp, "meta": meta}


def pocketbase_mail(settings: Settings) -> PocketBaseMail | None:
    """PocketBase's mail from the service's ``SMTP_*``, ``MAIL_FROM`` and ``APP_URL``; None
    without ``SMTP_HOST``."""
    if settings.smtp_host is None:
        return None
    return PocketBaseMail(
        host=settings.smtp_host,
        port=settings.smtp_port,
        security=settings.smtp_security,
        username=settings.smtp_username,
        password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
        sender=settings.mail_from,
        app_url=settings.app_url,
    )


def _quote(text: str) -> str:
    """A string literal's inside for a PocketBase filter in single quotes."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _text_fields(names: list[str] | tuple[str, ...]) -> list[dict[str, Any]]:
    return [{"name": name, "type": "text", "max": FIELD_LENGTH_MAX} for name in names]


def _identity(record: dict[str, Any]) -> Identity:
    return Identity(
        record_id=record["id"],
        email=record.get("email", ""),
        user_id=record.get("user_id", ""),
        product_id=record.get("product_id", ""),
        tenant_id=record.get("tenant_id", ""),
    )


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", ""))
    except ValueError:
        return ""


def _failure(what: str, response: httpx.Response) -> IdentityUnavailable:
    return IdentityUnavailable(
        f"PocketBase answered {response.status_code} to {what}: {_message(response)}".rstrip(": ")
    )


def _refusal(response: httpx.Response) -> Exception:
    """A 400 on create: a taken or bad email and a bad password are the caller's to fix."""
    try:
        problems = response.json().get("data", {}) or {}
    except ValueError:
        problems = {}
    email = problems.get("email")
    if email is not None:
        if email.get("code") == "validation_not_unique":
            return Duplicate("a PocketBase record with this email exists", field="email")
        return Invalid(f"PocketBase refused the email: {email.get('message')}", field="email")
    password = problems.get("password")
    if password is not None:
        return Invalid(
            f"PocketBase refused the password: {password.get('message')}", field="password"
        )
    return _failure("the record create", response)
