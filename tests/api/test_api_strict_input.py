"""Strict, boring input: one meaning per body, integers that are integers, bodies read as JSON
whatever their Content-Type, and answers that never carry a client's text back whole."""

import json
from decimal import Decimal

import pytest
from api_helpers import ADMIN, API, assert_rejected, call, check, log_usage, snapshot

from api.http import EXCERPT_CHARS_MAX, excerpt
from api.openapi import OPERATIONS

WRITES = [op for op in OPERATIONS if op.request is not None]


def _headers(op):
    return ADMIN if op.security == "admin_key" else API


def _path(op):
    return op.path.replace("{user_id}", "alice")


# -- duplicate keys ---------------------------------------------------------------------------


@pytest.mark.parametrize("op", WRITES, ids=lambda op: f"{op.method} {op.path}")
def test_a_duplicate_key_is_400_naming_it(shared_client, op):
    body = '{"user_id":"alice","request_id":"a","cost_estimate":1,"request_id":"b"}'
    before = snapshot(shared_client, "alice")
    reply = call(shared_client, op.method.upper(), _path(op), headers=_headers(op), body=body)
    assert_rejected(reply, 400, "invalid_json", field="request_id")
    assert reply["message"] == 'malformed JSON body: duplicate key "request_id"'
    assert snapshot(shared_client, "alice") == before


@pytest.mark.parametrize(
    "body",
    [
        '{"user_id":"alice","cost_estimate":1,"cost_estimate":1}',
        '{"user_id":"alice","cost_estimate":1,"x":{"a":1,"a":2}}',
        '{"user_id":"alice","cost_estimate":1,"x":[{"a":1},{"b":1,"b":1}]}',
        '{"user_id":"alice","cost_estimate":1,"user_id":"alice"}',
    ],
    ids=["same value", "in an ignored object", "in an array", "the same twice"],
)
def test_duplicate_keys_are_refused_wherever_they_are(shared_client, body):
    reply = call(shared_client, "POST", "/api/check-budget", headers=API, body=body)
    assert_rejected(reply, 400, "invalid_json")
    assert "duplicate key" in reply["message"]


def test_a_duplicated_key_is_quoted_short_and_escaped(shared_client):
    key = r"k\u0000\u001b[31m\u202e\"" + "x" * 500  # JSON escapes: NUL, ESC, RLO, a quote
    body = f'{{"user_id":"alice","cost_estimate":1,"{key}":1,"{key}":2}}'
    reply = call(shared_client, "POST", "/api/check-budget", headers=API, body=body)
    assert_rejected(reply, 400, "invalid_json")
    quoted = reply["field"]
    assert quoted.startswith('k\\x00\\x1b[31m\\u202e\\"x') and quoted.endswith("…")
    assert len(quoted) < 2 * EXCERPT_CHARS_MAX
    assert quoted in reply["message"]
    assert not any(char in reply.body["message"] for char in "\x00\x1b\u202e")
    assert "x" * 100 not in reply.text


def test_distinct_keys_in_distinct_objects_are_fine(shared_client):
    body = '{"user_id":"alice","cost_estimate":1,"x":[{"a":1},{"a":1}],"y":{"a":{"a":1}}}'
    assert call(shared_client, "POST", "/api/check-budget", headers=API, body=body).status == 200


# -- integers that are integers ---------------------------------------------------------------


@pytest.mark.parametrize("field", ["tokens_input", "tokens_output"])
@pytest.mark.parametrize("value", ["true", "false", '"5"', '"1e3"', "null"])
@pytest.mark.parametrize("path", ["/api/check-budget", "/api/log-usage"])
def test_a_token_count_that_is_not_a_json_integer_is_422(shared_client, path, field, value):
    body = f'{{"user_id":"alice","model":"gpt-4o","request_id":"r","cost_estimate":1,"cost_total":1,"{field}":{value}}}'
    before = snapshot(shared_client, "alice")
    reply = call(shared_client, "POST", path, headers=API, body=body)
    assert_rejected(reply, 422, "validation_error", field=field)
    assert snapshot(shared_client, "alice") == before


@pytest.mark.parametrize("value", ["true", "false"])
def test_a_boolean_response_time_is_422(shared_client, value):
    body = (
        f'{{"user_id":"alice","model":"m","request_id":"r","cost_total":1,"response_time":{value}}}'
    )
    reply = call(shared_client, "POST", "/api/log-usage", headers=API, body=body)
    assert_rejected(reply, 422, "validation_error", field="response_time")


def test_a_whole_number_written_with_a_fraction_or_exponent_is_still_a_count(client, alice):
    assert check(client, "alice", Decimal(1), tokens_input=Decimal("1000.0")).status == 200
    body = '{"user_id":"alice","cost_estimate":1,"tokens_output":1e3}'
    assert call(client, "POST", "/api/check-budget", headers=API, body=body).status == 200


# -- bodies are JSON whatever the Content-Type says ----------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-www-form-urlencoded",  # what `curl -d` sends
        "text/plain",
        "application/json; charset=utf-8",
        None,
    ],
)
def test_a_body_is_read_as_json_whatever_its_content_type(client, alice, content_type):
    headers = dict(API)
    if content_type is not None:
        headers["Content-Type"] = content_type
    body = json.dumps({"user_id": "alice", "model": "gpt-4o", "request_id": "r", "cost_total": 1})
    result = client.simulate_post("/api/log-usage", headers=headers, body=body)
    assert result.status_code == 201, result.text
    assert result.json["budget"]["used"] == 1


def test_the_readmes_curl_examples_work_with_curls_form_type(client):
    """The README's quick start, sent as `curl -d` sends it."""
    form = {**ADMIN, "Content-Type": "application/x-www-form-urlencoded"}
    gateway = {**API, "Content-Type": "application/x-www-form-urlencoded"}
    steps = [
        (form, "/api/admin/products", '{"id":"starter","name":"Starter","monthly_budget":20}', 201),
        (
            form,
            "/api/admin/provision-user",
            '{"email":"ada@example.com","password":"correct horse","product_id":"starter",'
            '"user_id":"ada"}',
            201,
        ),
        (
            gateway,
            "/api/check-budget",
            '{"user_id":"ada","model":"gpt-4o","tokens_input":1000,"tokens_output":500,'
            '"request_id":"req-1"}',
            200,
        ),
        (
            gateway,
            "/api/log-usage",
            '{"user_id":"ada","model":"gpt-4o","request_id":"req-1","tokens_input":1000,'
            '"tokens_output":480,"cost_total":0.0073}',
            201,
        ),
    ]
    for headers, path, body, status in steps:
        result = client.simulate_post(path, headers=headers, body=body)
        assert result.status_code == status, (path, result.text)


# -- answers quote client text short and escaped --------------------------------------------


def test_excerpt_cuts_and_escapes():
    assert excerpt("alice") == "alice"
    assert excerpt("a" * EXCERPT_CHARS_MAX) == "a" * EXCERPT_CHARS_MAX
    assert excerpt("a" * (EXCERPT_CHARS_MAX + 1)) == "a" * EXCERPT_CHARS_MAX + "…"
    assert excerpt('say "hi"\\now\n\x00\u202e') == 'say \\"hi\\"\\\\now\\n\\x00\\u202e'
    assert excerpt("café 😀") == "café 😀"


@pytest.mark.parametrize(
    ("method", "path_template"),
    [
        ("GET", "/api/users/{}/budget"),
        ("GET", "/api/users/{}/usage"),
        ("GET", "/api/admin/users/{}"),
    ],
)
def test_an_unknown_id_in_the_path_is_quoted_as_an_excerpt(shared_client, method, path_template):
    user_id = "%1B%5B2J" + "z" * 2000
    headers = ADMIN if "/admin/" in path_template else API
    reply = call(shared_client, method, path_template.format(user_id), headers=headers)
    assert_rejected(reply, 404, "not_found")
    assert reply["user_id"].startswith("\\x1b[2Jzzz") and reply["user_id"].endswith("…")
    assert "z" * 100 not in reply.text and "\x1b" not in reply.body["user_id"]


def test_a_long_request_id_of_an_unknown_hold_is_quoted_as_an_excerpt(shared_client):
    request_id = "r" * 256
    reply = call(
        shared_client,
        "POST",
        "/api/release-reservation",
        headers=API,
        json_body={"request_id": request_id},
    )
    assert_rejected(reply, 404, "not_found")
    assert reply["request_id"] == "r" * EXCERPT_CHARS_MAX + "…"


def test_an_unknown_model_is_not_quoted(shared_client):
    model = "secret-model-name-" + "m" * 200
    reply = call(
        shared_client,
        "POST",
        "/api/check-budget",
        headers=API,
        json_body={"user_id": "alice", "model": model, "tokens_input": 10},
    )
    assert_rejected(reply, 422, "validation_error", field="cost_estimate")
    assert "secret-model-name" not in reply.text


def test_a_malformed_body_is_not_quoted(shared_client):
    body = '{"user_id":"alice","cost_estimate":1, secret-garbage ' + "g" * 5000 + "}"
    reply = call(shared_client, "POST", "/api/check-budget", headers=API, body=body)
    assert_rejected(reply, 400, "invalid_json")
    assert "secret" not in reply.text and len(reply["message"]) < 200


def test_a_log_usage_of_an_unknown_user_names_it_as_an_excerpt(shared_client):
    reply = log_usage(shared_client, "u" * 256, "r-unknown")
    assert_rejected(reply, 404, "not_found")
    assert reply["user_id"] == "u" * EXCERPT_CHARS_MAX + "…"
