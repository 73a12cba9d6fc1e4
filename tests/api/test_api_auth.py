"""Keys: each route declares who may call it and the key is checked on the route a request
matched (X-API-Key for the gateway's routes, only X-Admin-Key for /api/admin/*); refusals are
401 JSON. Request targets that are not plain paths are refused before routing (400)."""

import json
import logging

import falcon
import falcon.inspect
import falcon.testing
import pytest
from api_helpers import (
    ADMIN,
    ADMIN_KEY,
    API,
    API_KEY,
    assert_rejected,
    call,
    check,
    snapshot,
)

from api.app import BillingApp
from api.auth import Access, RouteAccess
from api.http import dumps
from api.openapi import OPERATIONS, openapi_document

PROTECTED = [op for op in OPERATIONS if op.security is not None]
BODIES = {
    "/api/check-budget": {"user_id": "alice", "cost_estimate": 1, "request_id": "r-auth"},
    "/api/log-usage": {
        "user_id": "alice",
        "model": "gpt-4o",
        "request_id": "r-auth",
        "cost_total": 1,
    },
    "/api/release-reservation": {"request_id": "r-auth"},
    "/api/admin/reset-budgets": {"period": "2026-12"},
    "/api/admin/provision-user": {
        "email": "mallory@example.com",
        "password": "long enough pw",
        "product_id": "basic",
        "user_id": "mallory",
    },
    "/api/admin/products": {"id": "basic", "name": "Free money", "monthly_budget": 1000},
    "/api/admin/tenants": {"id": "default", "name": "Hijacked", "monthly_budget": 0},
    "/api/admin/users/{user_id}": {"status": "suspended"},
    "/api/admin/users/{user_id}/credits": {"amount": 1000, "reason": "free", "grant_id": "g"},
}


def _request(op, headers):
    body = BODIES.get(op.path) if op.method in ("post", "patch") else None
    if body is None:
        return dict(headers=headers)
    return dict(headers=headers, json_body=body)


def _wrong_headers(op) -> list[tuple[str, dict]]:
    right = "X-Admin-Key" if op.security == "admin_key" else "X-API-Key"
    other = API if op.security == "admin_key" else ADMIN
    right_key = ADMIN_KEY if op.security == "admin_key" else API_KEY
    return [
        ("no key", {}),
        ("wrong key", {right: "x" * 32}),
        ("right key with one character changed", {right: right_key[:-1] + "X"}),
        ("right key as a prefix", {right: right_key[:-1]}),
        ("empty key", {right: ""}),
        ("the other key", other),
        ("the other key in this header", {right: API_KEY if right_key == ADMIN_KEY else ADMIN_KEY}),
    ]


CASES = [
    pytest.param(op, label, headers, id=f"{op.method} {op.path} [{label}]")
    for op in PROTECTED
    for label, headers in _wrong_headers(op)
]


@pytest.mark.parametrize(("op", "label", "headers"), CASES)
def test_a_protected_route_refuses_a_missing_or_wrong_key_and_changes_nothing(
    shared_client, op, label, headers
):
    client = shared_client
    before = snapshot(client, "alice")
    kwargs = _request(op, headers)
    reply = call(client, op.method.upper(), op.path.replace("{user_id}", "alice"), **kwargs)
    assert_rejected(reply, 401, "unauthorized")
    expected_header = "X-Admin-Key" if op.security == "admin_key" else "X-API-Key"
    assert expected_header in reply.body["message"]
    assert snapshot(client, "alice") == before
    assert call(client, "GET", "/api/admin/users/mallory", headers=ADMIN).status == 404


@pytest.mark.parametrize("op", PROTECTED, ids=lambda op: f"{op.method} {op.path}")
def test_the_right_key_opens_its_routes(client, alice, op):
    headers = ADMIN if op.security == "admin_key" else API
    reply = call(
        client, op.method.upper(), op.path.replace("{user_id}", "alice"), **_request(op, headers)
    )
    assert reply.status != 401, reply.body


def test_header_names_are_case_insensitive(client, alice):
    assert (
        call(client, "GET", "/api/users/alice/budget", headers={"x-api-key": API_KEY}).status == 200
    )
    assert (
        call(client, "GET", "/api/admin/users/alice", headers={"x-admin-key": ADMIN_KEY}).status
        == 200
    )


def test_sending_both_keys_does_not_open_admin_routes_with_a_wrong_admin_key(client, alice):
    reply = call(
        client, "GET", "/api/admin/products", headers={"X-API-Key": API_KEY, "X-Admin-Key": API_KEY}
    )
    assert_rejected(reply, 401, "unauthorized")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/admin/products/", 401),
        ("/api/%61dmin/products", 401),
        ("/api/admin//products", 400),
        ("/api/./admin/products", 400),
        ("/api/users/../admin/products", 400),
        ("/api/%2e%2E/api/admin/products", 400),
        ("/api%2Fadmin%2Fproducts", 400),
    ],
)
def test_the_api_key_does_not_reach_admin_routes_by_spelling_the_path_differently(
    client, plan, path, status
):
    result = client.simulate_get(path, headers=API)
    assert result.status_code == status, result.text
    assert result.json["error"] == ("unauthorized" if status == 401 else "bad_request")
    assert "products" not in result.json


@pytest.mark.parametrize(
    "path", ["//api/admin/products", "/api/admin/products//", "/api/admin/./products"]
)
def test_a_target_that_is_not_a_plain_path_is_refused_even_with_the_right_key(shared_client, path):
    before = snapshot(shared_client, "alice")
    result = shared_client.simulate_post(
        path,
        headers={**ADMIN, "Content-Type": "application/json"},
        body=json.dumps(BODIES["/api/admin/products"]),
    )
    assert result.status_code == 400, result.text
    assert result.json["error"] == "bad_request"
    assert snapshot(shared_client, "alice") == before


@pytest.mark.parametrize(
    ("request_uri", "path_info", "status"),
    [
        ("api/admin/products", "api/admin/products", "400 Bad Request"),
        ("*", "*", "400 Bad Request"),
        ("ftp://host/api/admin/products", "/api/admin/products", "400 Bad Request"),
        ("http://[::1/api/admin/products", "/api/admin/products", "400 Bad Request"),
        ("http://host/api/admin/products", "/api/admin/products", "401 Unauthorized"),
        ("https://host/api/admin/products?x=//", "/api/admin/products", "401 Unauthorized"),
        ("http://host", "", "200 OK"),
    ],
)
def test_a_target_as_waitress_passes_it_on(client, request_uri, path_info, status):
    """Targets Falcon's test client will not send, in the environ waitress makes of them: the
    request line's target in REQUEST_URI, its decoded path in PATH_INFO."""
    environ = falcon.testing.create_environ(headers=API)
    environ.update(REQUEST_URI=request_uri, PATH_INFO=path_info)
    start_response = falcon.testing.StartResponseMock()
    body = b"".join(client.app(environ, start_response))
    assert start_response.status == status, body
    if status != "200 OK":
        assert json.loads(body)["error"] == ("bad_request" if "400" in status else "unauthorized")


def test_a_refused_target_is_logged_and_counted_as_unrouted(client, caplog):
    with caplog.at_level(logging.INFO, logger="billing.request"):
        assert client.simulate_get("/api/./check-budget").status_code == 400
    lines = [record for record in caplog.records if record.name == "billing.request"]
    assert [(line.fields["route"], line.fields["status"]) for line in lines] == [("unrouted", 400)]
    scraped = client.simulate_get("/metrics").text
    assert 'billing_http_requests_total{method="GET",route="unrouted",status="400"} 1.0' in scraped


def test_unknown_routes_are_404_with_or_without_a_key(client):
    """Nothing to protect and nothing hidden (every route is listed in /openapi.json)."""
    for headers in ({}, API, ADMIN):
        assert_rejected(call(client, "GET", "/api/nothing-here", headers=headers), 404)
        assert_rejected(call(client, "GET", "/api/admin/nothing-here", headers=headers), 404)


def test_a_method_a_route_lacks_still_needs_its_key(client):
    assert_rejected(call(client, "DELETE", "/api/admin/products"), 401, "unauthorized")
    assert_rejected(call(client, "DELETE", "/api/admin/products", headers=API), 401)
    assert_rejected(call(client, "DELETE", "/api/admin/products", headers=ADMIN), 405)


def test_public_routes_need_no_key(client):
    assert call(client, "GET", "/").status == 200
    assert call(client, "GET", "/openapi.json").status == 200


def test_the_openapi_document_is_encoded_once_when_the_app_is_made(client, monkeypatch):
    expected = dumps(openapi_document())

    def encode_again(body: object) -> bytes:
        raise AssertionError("the document was encoded for a request")

    monkeypatch.setattr("api.http.dumps", encode_again)
    for _ in range(2):
        result = client.simulate_get("/openapi.json")
        assert result.status_code == 200
        assert result.headers["content-type"] == "application/json"
        assert result.content == expected


_PUBLISHED_SECURITY = {
    Access.PUBLIC: None,
    Access.METRICS: None,
    Access.GATEWAY: "api_key",
    Access.ADMIN: "admin_key",
}


def test_every_route_declares_the_access_its_openapi_operation_publishes(env):
    declared = dict(env.app.route_access.items())
    served = {route.path for route in falcon.inspect.inspect_routes(env.app)}
    assert served == set(declared)
    for op in OPERATIONS:
        assert _PUBLISHED_SECURITY[declared[op.path]] == op.security, op.path
    assert declared["/metrics"] is Access.METRICS


class _Resource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        raise AssertionError("the resource of a route without a declared access ran")


class _WithOptions(_Resource):
    def on_options(self, req: falcon.Request, resp: falcon.Response) -> None:
        raise AssertionError("unreachable")


def test_a_route_cannot_be_added_without_a_declared_access():
    app = BillingApp(RouteAccess())
    with pytest.raises(TypeError, match="access"):
        app.add_route("/x", _Resource())
    with pytest.raises(TypeError, match="must be an Access"):
        app.add_route("/x", _Resource(), access="public")
    with pytest.raises(ValueError, match="on_options"):
        app.add_route("/x", _WithOptions(), access=Access.ADMIN)
    app.add_route("/x", _Resource(), access=Access.ADMIN)
    with pytest.raises(ValueError, match="declared twice"):
        app.add_route("/x", _Resource(), access=Access.PUBLIC)
    assert app.route_access.items() == [("/x", Access.ADMIN)]


def test_a_route_slipped_past_the_declaration_is_refused_and_its_resource_never_runs(env):
    falcon.App.add_route(env.app, "/api/slipped-in", _Resource())
    result = env.client.simulate_get("/api/slipped-in", headers={**API, **ADMIN})
    assert result.status_code == 500
    assert result.json == {"error": "internal_error", "message": "internal error"}


def test_the_per_key_limit_counts_a_gateway_route_however_its_path_is_spelled(make_env):
    client = make_env(rate_limit="2/minute").client
    assert call(client, "GET", "/api/users/nobody/budget/", headers=API).status == 404
    assert client.simulate_get("/api/users/nobody/budg%65t", headers=API).status_code == 404
    assert call(client, "GET", "/api/admin/products", headers=ADMIN).status == 200
    assert_rejected(check(client, "nobody"), 429, "rate_limited")
