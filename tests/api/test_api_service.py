"""Service routes: health (200 and 503), OpenAPI against the app's routes and bounds, and CORS."""

from decimal import Decimal

import falcon
import falcon.inspect
import pytest
from api_helpers import ADMIN, API, Reply, assert_error_shape, call, check_contract
from pydantic import ValidationError

from api import __version__
from api.openapi import OPERATIONS
from wire.schemas import Health


def test_health_reports_ok_version_and_database(client):
    reply = call(client, "GET", "/")
    assert reply.status == 200
    assert reply.body == {"status": "ok", "version": __version__, "database": "ok"}


def _health_after_database_failure(env) -> Reply:
    assert call(env.client, "GET", "/").status == 200  # opens this thread's read connection
    env.store.close()  # the database goes away under the running app
    result = env.client.simulate_get("/")
    return Reply(result.status_code, result.json, result.headers, result.text)


def test_health_is_503_when_the_database_fails(env):
    reply = _health_after_database_failure(env)
    assert reply.status == 503
    assert reply.headers["content-type"].startswith("application/json")
    Health.model_validate(reply.body)
    assert reply.body["status"] == "error"
    assert reply.body["database"] == "error"
    assert reply.body["version"] == __version__


def test_health_503_body_is_an_error_body(env):
    assert_error_shape(_health_after_database_failure(env), 503)


def test_openapi_document_is_3_1_and_lists_every_operation(client):
    reply = call(client, "GET", "/openapi.json")
    assert reply.status == 200
    document = reply.body
    assert document["openapi"] == "3.1.0"
    assert document["info"]["version"] == __version__
    listed = {(method, path) for path, item in document["paths"].items() for method in item}
    assert listed == {(op.method, op.path) for op in OPERATIONS}
    schemas = document["components"]["schemas"]
    for op in OPERATIONS:
        entry = document["paths"][op.path][op.method]
        if op.responses:
            assert {int(code) for code in entry["responses"]} == set(op.responses), op.path
        for code, response in entry["responses"].items():
            if not op.responses:
                continue
            schema = response["content"]["application/json"]["schema"]
            name = schema["$ref"].rsplit("/", 1)[1]
            assert name == op.responses[int(code)].__name__
            assert name in schemas
        if op.request is not None:
            ref = entry["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.rsplit("/", 1)[1] in schemas
        if op.security is not None:
            header = document["components"]["securitySchemes"][op.security]["name"]
            assert header == ("X-Admin-Key" if op.path.startswith("/api/admin/") else "X-API-Key")


def _served_routes(app: falcon.App) -> set[tuple[str, str]]:
    """Every (method, URI template) the app has a responder of ours for (``falcon.inspect``;
    Falcon's own OPTIONS and 405 responders are left out)."""
    return {
        (method.method.lower(), route.path)
        for route in falcon.inspect.inspect_routes(app)
        for method in route.methods
        if not method.internal
    }


def test_every_route_the_app_serves_has_an_operation(env):
    served = _served_routes(env.app)
    assert served, "no routes found in the router"
    assert served == {(op.method, op.path) for op in OPERATIONS}


def test_cors_allows_only_the_configured_origin(make_env):
    client = make_env(cors_origins="https://ok.example").client
    allowed = call(client, "GET", "/", headers={"Origin": "https://ok.example"})
    assert allowed.headers.get("access-control-allow-origin") == "https://ok.example"
    other = call(client, "GET", "/", headers={"Origin": "https://evil.example"})
    assert other.status == 200
    assert "access-control-allow-origin" not in other.headers
    api_call = call(
        client,
        "POST",
        "/api/check-budget",
        headers={**API, "Origin": "https://ok.example"},
        json_body={"user_id": "nobody", "cost_estimate": 1},
    )
    assert api_call.headers.get("access-control-allow-origin") == "https://ok.example"


def test_cors_preflight_for_the_allowed_origin_names_the_key_header(make_env):
    client = make_env(cors_origins="https://ok.example").client
    request_headers = {
        "Origin": "https://ok.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key,content-type",
    }
    preflight = client.simulate_options("/api/check-budget", headers=request_headers)
    assert preflight.status_code == 200
    assert preflight.headers.get("access-control-allow-origin") == "https://ok.example"
    assert "POST" in preflight.headers.get("access-control-allow-methods", "")
    assert "x-api-key" in preflight.headers.get("access-control-allow-headers", "").lower()
    refused = client.simulate_options(
        "/api/check-budget", headers={**request_headers, "Origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in refused.headers


def test_no_cors_headers_without_cors_origins(client):
    reply = call(client, "GET", "/", headers={"Origin": "https://ok.example"})
    assert reply.status == 200
    assert not any(name.lower().startswith("access-control-") for name in reply.headers)
    preflight = client.simulate_options(
        "/api/check-budget",
        headers={"Origin": "https://ok.example", "Access-Control-Request-Method": "POST"},
    )
    assert not any(name.lower().startswith("access-control-") for name in preflight.headers)


def test_the_contract_check_catches_unlisted_statuses_wrong_bodies_and_extra_fields():
    """``call`` relies on check_contract; prove it refuses what it should."""
    ok = {"request_id": "r", "released": 1}
    check_contract("post", "/api/release-reservation", 200, ok)
    with pytest.raises(AssertionError, match="not listed"):
        check_contract("post", "/api/release-reservation", 201, ok)
    with pytest.raises(ValidationError):
        check_contract("post", "/api/release-reservation", 200, {"request_id": "r"})
    with pytest.raises(AssertionError, match="not in"):
        check_contract("post", "/api/release-reservation", 200, {**ok, "extra": 1})
    with pytest.raises(AssertionError, match="not in"):
        check_contract(
            "get",
            "/api/admin/users/u1",
            200,
            {
                "id": "u1",
                "email": "e@x",
                "product_id": "p",
                "tenant_id": "t",
                "status": "active",
                "created_at": "",
                "budget": {"total": 1, "used": 0, "remaining": 1, "reserved": 0},
            },
        )
    with pytest.raises(AssertionError, match="no operation"):
        check_contract("get", "/api/users/u1/budget/extra", 200, {})


def _document(client) -> dict:
    return call(client, "GET", "/openapi.json").body


def test_a_credit_of_the_documented_minimum_is_granted(client, alice):
    """The document's least credit is one nano-dollar; the server grants it and no less."""
    schema = _document(client)["components"]["schemas"]["CreditRequest"]
    least = schema["properties"]["amount"]["minimum"]
    assert least == Decimal("0.000000001")
    path = "/api/admin/users/alice/credits"
    granted = call(client, "POST", path, headers=ADMIN, json_body={"amount": least, "reason": "r"})
    assert granted.status == 201
    nothing = call(client, "POST", path, headers=ADMIN, json_body={"amount": 0, "reason": "r"})
    assert_error_shape(nothing, 422)
    assert nothing["field"] == "amount"


def test_a_user_patch_needs_one_of_the_documented_alternatives(client, alice):
    schema = _document(client)["components"]["schemas"]["UserPatchRequest"]
    alternatives = [option["required"] for option in schema["anyOf"]]
    assert alternatives == [["status"], ["product_id"]]
    path = "/api/admin/users/alice"
    for body in ({"status": "active"}, {"product_id": "basic"}):
        assert call(client, "PATCH", path, headers=ADMIN, json_body=body).status == 200
    for body in ({}, {"status": None, "product_id": None}):
        assert_error_shape(call(client, "PATCH", path, headers=ADMIN, json_body=body), 422)


def test_the_usage_query_is_documented_as_the_server_reads_it(client, alice):
    operation = _document(client)["paths"]["/api/users/{user_id}/usage"]["get"]
    query = {item["name"]: item for item in operation["parameters"] if item["in"] == "query"}
    assert set(query) == {"from", "to", "group_by"}
    assert not any(item["required"] for item in query.values())
    assert {"type": "null"} not in query["from"]["schema"].get("anyOf", [])
    path = "/api/users/alice/usage"
    for group_by in query["group_by"]["schema"]["enum"]:
        reply = call(client, "GET", path, headers=API, params={"group_by": group_by})
        assert reply.status == 200
        assert reply["group_by"] == group_by
    refused = call(client, "GET", path, headers=API, params={"group_by": "week"})
    assert_error_shape(refused, 422)
    assert refused["field"] == "group_by"
