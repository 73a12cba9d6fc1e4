"""Helpers for the API tests: keys, a fake clock, and `call`, which checks replies by OpenAPI."""

import json
import threading
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import falcon
import falcon.testing
import simplejson
from pydantic import BaseModel

from api.app import create_app
from api.openapi import OPERATIONS, Operation
from core.ledger import Ledger
from core.prices import load_price_table
from core.provisioning import IdentityStore
from core.settings import Keys, Settings
from core.store import open_store
from core.store.base import LedgerStore
from wire.schemas import Error

API_KEY = "api-key-kkkkkkkkkkkkkkkk"
ADMIN_KEY = "admin-key-aaaaaaaaaaaaaaaa"
API = {"X-API-Key": API_KEY}
ADMIN = {"X-Admin-Key": ADMIN_KEY}

START = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
START_MS = int(START.timestamp()) * 1000
START_ISO = "2026-03-15T12:00:00.000Z"
START_LABEL = "2026-03"
TTL_SECONDS = 600
PASSWORD = "correct horse battery staple"
PLAN_BUDGET = Decimal("10")
TEST_POOL_SIZE = 4
TEST_POOL_TIMEOUT_SECONDS = 10.0

_UNSET = object()


class FakeClock:
    """Integer ms since the epoch that only move when a test moves them."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            return self.now_ms

    def advance(self, seconds: float) -> int:
        assert seconds >= 0
        with self._lock:
            self.now_ms += int(seconds * 1000)
            return self.now_ms


@dataclass
class Env:
    """One app over its own database file, and what a test needs to reach behind it."""

    client: falcon.testing.TestClient
    app: falcon.App
    store: LedgerStore
    ledger: Ledger
    clock: FakeClock
    settings: Settings


def build_env(
    folder: Path,
    clock: FakeClock,
    name: str = "api",
    database_url: str | None = None,
    identities: IdentityStore | None = None,
    **overrides: object,
) -> Env:
    """Settings, keys, a real store (a SQLite file in ``folder`` unless ``database_url`` names
    another) and a ledger on ``clock``, and the app over them. The caller closes ``env.store``.

    ``identities`` (a PocketBase adapter) joins provisioning.
    """
    values: dict[str, object] = {
        "data_dir": folder,
        "database_url": database_url or f"sqlite:///{folder}/{name}.db",
        "billing_api_key": API_KEY,
        "admin_secret_key": ADMIN_KEY,
        "cors_origins": "",
        "budget_timezone": "UTC",
        "reservation_ttl_seconds": TTL_SECONDS,
        "body_bytes_max": 64 * 1024,
        "model_prices_path": None,
    }
    values.update(overrides)
    settings = Settings(**values)
    keys = Keys(API_KEY, ADMIN_KEY, None)
    store = open_store(
        settings.database_url,
        clock,
        "FULL",
        database_pool_size=TEST_POOL_SIZE,
        database_pool_timeout_seconds=TEST_POOL_TIMEOUT_SECONDS,
    )
    ledger = Ledger(
        store, load_price_table(), settings.zone, settings.reservation_ttl_seconds, clock_ms=clock
    )
    app = create_app(settings, keys, ledger, identities)
    return Env(falcon.testing.TestClient(app), app, store, ledger, clock, settings)


@contextmanager
def env_with_alice(folder: Path, database_url: str | None = None) -> Iterator[Env]:
    """An app on its own database with alice on the $10 ``basic`` plan; its store closed after."""
    env = build_env(folder, FakeClock(START_MS), database_url=database_url)
    try:
        assert put_product(env.client).status == 201
        assert provision(env.client, "alice").status == 201
        yield env
    finally:
        env.store.close()


@dataclass
class Reply:
    """One response: status code, body parsed with exact decimals, headers, raw text."""

    status: int
    body: Any
    headers: Any
    text: str

    def __getitem__(self, key: str) -> Any:
        return self.body[key]


def find_operation(method: str, path: str) -> Operation | None:
    """The operation in ``OPERATIONS`` whose method and path template match the request."""
    route = path.split("?", 1)[0]
    if len(route) > 1:
        route = route.rstrip("/")
    parts = route.split("/")
    for op in OPERATIONS:
        if op.method != method.lower():
            continue
        template = op.path.split("/")
        if len(template) == len(parts) and all(
            (t.startswith("{") and t.endswith("}") and p) or t == p
            for t, p in zip(template, parts, strict=True)
        ):
            return op
    return None


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, typing.Annotated):
        for argument in typing.get_args(annotation):
            found.extend(_models_in(argument))
    return found


def assert_no_undeclared_fields(model: type[BaseModel], body: Any, where: str) -> None:
    """A success body carries only the fields its model declares (recursively)."""
    if isinstance(body, list):
        for item in body:
            assert_no_undeclared_fields(model, item, where)
        return
    if not isinstance(body, dict):
        return
    declared = {(info.alias or name): info for name, info in model.model_fields.items()}
    extra = set(body) - set(declared)
    assert not extra, f"{where}: fields {sorted(extra)} are not in {model.__name__}"
    for key, info in declared.items():
        if key in body and body[key] is not None:
            for inner in _models_in(info.annotation):
                assert_no_undeclared_fields(inner, body[key], f"{where}.{key}")


def check_contract(method: str, path: str, status: int, body: Any) -> None:
    """The status is listed for the operation and the body validates against its model."""
    op = find_operation(method, path)
    where = f"{method.upper()} {path} -> {status}"
    if op is None:
        # No operation: an unknown route, an unsupported method, or refused before routing.
        assert status in (401, 404, 405), f"{where}: no operation in OPERATIONS for this request"
        Error.model_validate(body)
        return
    if not op.responses:
        assert status == 200, where
        return
    assert status in op.responses, (
        f"{where}: status not listed for {op.method.upper()} {op.path} in OPERATIONS"
    )
    model = op.responses[status]
    model.model_validate(body)
    if not issubclass(model, Error):
        assert_no_undeclared_fields(model, body, where)


def encode(payload: Any) -> str:
    """JSON with Decimals written as exact numbers (floats keep their repr)."""
    return simplejson.dumps(payload, use_decimal=True)


def call(
    client: falcon.testing.TestClient,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    json_body: Any = _UNSET,
    body: str | bytes | None = None,
    params: dict[str, str] | None = None,
) -> Reply:
    """Send one request through falcon.testing and check the reply against the contract.

    Every reply must be JSON; every error reply must carry ``error`` and ``message``; the status
    must be listed for the operation in ``api.openapi.OPERATIONS`` and the body must validate
    against the model listed for it.
    """
    all_headers = dict(headers or {})
    if json_body is not _UNSET:
        assert body is None
        body = encode(json_body)
    if body is not None:
        all_headers.setdefault("Content-Type", "application/json")
    result = client.simulate_request(
        method.upper(), path, headers=all_headers, body=body, params=params
    )
    text = result.text
    parsed = json.loads(text, parse_float=Decimal) if text else None
    reply = Reply(result.status_code, parsed, result.headers, text)
    where = f"{method.upper()} {path} -> {reply.status}"
    assert text, f"{where}: empty body"
    assert result.headers.get("content-type", "").startswith("application/json"), where
    if reply.status >= 400:
        assert_error_shape(reply)
    check_contract(method, path, reply.status, parsed)
    return reply


def assert_error_shape(reply: Reply, status: int | None = None, code: str | None = None) -> None:
    """A JSON error: ``{"error": <code>, "message": <text>, …}``."""
    if status is not None:
        assert reply.status == status, (reply.status, reply.body)
    assert reply.headers.get("content-type", "").startswith("application/json")
    assert isinstance(reply.body, dict), reply.body
    assert isinstance(reply.body.get("error"), str) and reply.body["error"], reply.body
    assert isinstance(reply.body.get("message"), str) and reply.body["message"], reply.body
    if code is not None:
        assert reply.body["error"] == code, reply.body


def assert_rejected(
    reply: Reply, status: int, code: str | None = None, field: str | None = None
) -> None:
    """An error reply with this status (and code, and field at fault, when given)."""
    assert_error_shape(reply, status, code)
    if field is not None:
        assert reply.body.get("field") == field, reply.body


# -- short-hands over call ----------------------------------------------------------------


def put_product(
    client, product_id: str = "basic", budget: Any = PLAN_BUDGET, name: str = "Basic"
) -> Reply:
    return call(
        client,
        "POST",
        "/api/admin/products",
        headers=ADMIN,
        json_body={"id": product_id, "name": name, "monthly_budget": budget},
    )


def provision(
    client,
    user_id: str | None,
    *,
    email: str | None = None,
    product_id: str = "basic",
    tenant_id: str | None = None,
    password: str = PASSWORD,
) -> Reply:
    payload: dict[str, Any] = {
        "email": email if email is not None else f"{user_id}@example.com",
        "password": password,
        "product_id": product_id,
    }
    if user_id is not None:
        payload["user_id"] = user_id
    if tenant_id is not None:
        payload["tenant_id"] = tenant_id
    return call(client, "POST", "/api/admin/provision-user", headers=ADMIN, json_body=payload)


def check(
    client,
    user_id: str,
    cost_estimate: Any = Decimal("1"),
    request_id: str | None = None,
    **extra: Any,
) -> Reply:
    payload: dict[str, Any] = {
        "user_id": user_id,
        "model": "gpt-4o",
        "tokens_input": 100,
        "tokens_output": 50,
    }
    if cost_estimate is not None:
        payload["cost_estimate"] = cost_estimate
    if request_id is not None:
        payload["request_id"] = request_id
    payload.update(extra)
    return call(client, "POST", "/api/check-budget", headers=API, json_body=payload)


def log_usage(
    client, user_id: str, request_id: str, cost_total: Any = Decimal("1"), **extra: Any
) -> Reply:
    payload: dict[str, Any] = {
        "user_id": user_id,
        "model": "gpt-4o",
        "request_id": request_id,
        "tokens_input": 100,
        "tokens_output": 50,
        "response_time": 850,
    }
    if cost_total is not None:
        payload["cost_total"] = cost_total
    payload.update(extra)
    return call(client, "POST", "/api/log-usage", headers=API, json_body=payload)


def release(client, request_id: str) -> Reply:
    return call(
        client,
        "POST",
        "/api/release-reservation",
        headers=API,
        json_body={"request_id": request_id},
    )


def budget_view(client, user_id: str) -> dict:
    """``GET /api/users/{id}/budget`` body (must be 200)."""
    reply = call(client, "GET", f"/api/users/{user_id}/budget", headers=API)
    assert reply.status == 200, reply.body
    return reply.body


def figures(client, user_id: str) -> dict:
    """``{"total","used","remaining","reserved"}`` of a user."""
    return budget_view(client, user_id)["budget"]


def usage_total(client, user_id: str) -> dict:
    reply = call(client, "GET", f"/api/users/{user_id}/usage", headers=API)
    assert reply.status == 200, reply.body
    return reply.body["total"]


def snapshot(client, user_id: str) -> tuple:
    """Everything a rejected request must leave as it was: the budget view, usage, plans, user."""
    user = call(client, "GET", f"/api/admin/users/{user_id}", headers=ADMIN)
    products = call(client, "GET", "/api/admin/products", headers=ADMIN)
    return budget_view(client, user_id), usage_total(client, user_id), user.body, products.body
