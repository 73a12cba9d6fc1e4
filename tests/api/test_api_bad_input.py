"""Bad input: malformed JSON 400, schema 422, oversized 413, routes 404, methods 405, all JSON."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from api_helpers import ADMIN, API, assert_rejected, call, provision, put_product, snapshot

from api.openapi import OPERATIONS

WRITES = [op for op in OPERATIONS if op.request is not None]


def _headers(op):
    return ADMIN if op.security == "admin_key" else API


def _path(op):
    return op.path.replace("{user_id}", "alice")


@pytest.mark.parametrize(
    "body",
    [
        '{"user_id": "alice",',
        "{'user_id': 'alice'}",
        "not json",
        '{"a":1} trailing',
        b"\xff\xfe\x00",
    ],
    ids=["truncated", "single quotes", "bare words", "trailing data", "not UTF-8"],
)
@pytest.mark.parametrize("op", WRITES, ids=lambda op: f"{op.method} {op.path}")
def test_malformed_json_is_400_invalid_json(shared_client, op, body):
    before = snapshot(shared_client, "alice")
    reply = call(shared_client, op.method.upper(), _path(op), headers=_headers(op), body=body)
    assert_rejected(reply, 400, "invalid_json")
    assert snapshot(shared_client, "alice") == before


@pytest.mark.parametrize("body", ["[]", '[{"user_id":"alice"}]', '"alice"', "42", "null", "true"])
@pytest.mark.parametrize("op", WRITES, ids=lambda op: f"{op.method} {op.path}")
def test_a_body_that_is_not_an_object_is_422(shared_client, op, body):
    before = snapshot(shared_client, "alice")
    reply = call(shared_client, op.method.upper(), _path(op), headers=_headers(op), body=body)
    assert_rejected(reply, 422, "validation_error")
    assert snapshot(shared_client, "alice") == before


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/api/check-budget", {"cost_estimate": 1}, "user_id"),
        ("/api/check-budget", {"user_id": "", "cost_estimate": 1}, "user_id"),
        (
            "/api/check-budget",
            {"user_id": "alice", "cost_estimate": 1, "tokens_input": -1},
            "tokens_input",
        ),
        (
            "/api/check-budget",
            {"user_id": "alice", "cost_estimate": 1, "tokens_output": 1.5},
            "tokens_output",
        ),
        (
            "/api/check-budget",
            {"user_id": "alice", "cost_estimate": 1, "tokens_input": "many"},
            "tokens_input",
        ),
        (
            "/api/check-budget",
            {"user_id": "alice", "cost_estimate": 1, "request_id": ""},
            "request_id",
        ),
        ("/api/check-budget", {"user_id": "a" * 257, "cost_estimate": 1}, "user_id"),
        ("/api/log-usage", {"user_id": "alice", "request_id": "r", "cost_total": 1}, "model"),
        (
            "/api/log-usage",
            {
                "user_id": "alice",
                "model": "m",
                "request_id": "r",
                "cost_total": 1,
                "response_time": -1,
            },
            "response_time",
        ),
        ("/api/release-reservation", {}, "request_id"),
    ],
)
def test_schema_errors_are_422_naming_the_field(shared_client, path, payload, field):
    before = snapshot(shared_client, "alice")
    reply = call(shared_client, "POST", path, headers=API, json_body=payload)
    assert_rejected(reply, 422, "validation_error", field=field)
    assert field in reply["message"]
    assert snapshot(shared_client, "alice") == before


@pytest.mark.parametrize("op", WRITES, ids=lambda op: f"{op.method} {op.path}")
def test_a_body_over_body_bytes_max_is_413(make_env, op):
    env = make_env(body_bytes_max=1024)
    client = env.client
    body = '{"user_id":"alice"' + " " * 2000 + "}"
    assert len(body) == 2019
    reply = call(client, op.method.upper(), _path(op), headers=_headers(op), body=body)
    assert_rejected(reply, 413, "payload_too_large")
    assert "1024" in reply["message"]


def test_a_body_at_body_bytes_max_is_read(make_env):
    client = make_env(body_bytes_max=1024).client
    assert put_product(client).status == 201
    head = '{"user_id":"nobody","cost_estimate":1'
    body = head + " " * (1024 - len(head) - 1) + "}"
    assert len(body.encode()) == 1024
    reply = call(client, "POST", "/api/check-budget", headers=API, body=body)
    assert reply.status == 404  # read and understood: the user is unknown
    too_big = call(client, "POST", "/api/check-budget", headers=API, body=body + " ")
    assert_rejected(too_big, 413, "payload_too_large")


def test_an_oversized_body_changes_nothing(make_env, clock):
    env = make_env(body_bytes_max=1024)
    client = env.client
    assert put_product(client).status == 201
    assert provision(client, "alice").status == 201
    before = snapshot(client, "alice")
    body = (
        '{"user_id":"alice","model":"gpt-4o","request_id":"r","cost_total":5,"pad":"'
        + "x" * 2000
        + '"}'
    )
    assert_rejected(call(client, "POST", "/api/log-usage", headers=API, body=body), 413)
    assert snapshot(client, "alice") == before


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/nothing-here", {}),
        ("GET", "/api/nothing-here", API),
        ("POST", "/api/admin/nothing-here", ADMIN),
        ("GET", "/api/users/alice", API),
        ("GET", "/api/users/alice/budget/extra", API),
    ],
)
def test_an_unknown_route_is_404_json(shared_client, method, path, headers):
    assert_rejected(call(shared_client, method, path, headers=headers), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/api/check-budget", API),
        ("PUT", "/api/log-usage", API),
        ("DELETE", "/api/admin/users/alice", ADMIN),
        ("PUT", "/api/admin/products", ADMIN),
        ("POST", "/api/users/alice/budget", API),
        ("GET", "/api/admin/reset-budgets", ADMIN),
        ("POST", "/", {}),
    ],
)
def test_a_wrong_method_is_405_json(shared_client, method, path, headers):
    before = snapshot(shared_client, "alice")
    reply = call(shared_client, method, path, headers=headers, body='{"period":"2026-12"}')
    assert_rejected(reply, 405, "method_not_allowed")
    assert snapshot(shared_client, "alice") == before


# -- numbers that are valid JSON but must not reach int() --------------------------------

LONG_INTEGER = "9" * 5000  # more digits than Python converts from text by default (4300)


@pytest.mark.parametrize("field", ["tokens_input", "cost_estimate"])
def test_a_very_long_integer_literal_is_refused_as_bad_input(shared_client, field):
    body = f'{{"user_id":"alice","cost_estimate":1,"{field}":{LONG_INTEGER}}}'
    result = shared_client.simulate_post("/api/check-budget", headers=API, body=body)
    assert result.status_code in (400, 422), result.text
    assert result.json["error"] in ("invalid_json", "validation_error")


_HUGE_EXPONENT_SCRIPT = textwrap.dedent(
    """
    import sys, pathlib
    sys.path.insert(0, sys.argv[1])
    from api_helpers import API, START_MS, FakeClock, build_env
    env = build_env(pathlib.Path.cwd(), FakeClock(START_MS))
    body = '{"user_id":"alice","cost_estimate":1,"tokens_input":1e999999999}'
    result = env.client.simulate_post("/api/check-budget", headers=API, body=body)
    print(result.status_code, result.text)
    env.store.close()
    """
)


def test_a_huge_exponent_in_a_token_count_is_refused_quickly(tmp_path):
    try:
        done = subprocess.run(
            [sys.executable, "-c", _HUGE_EXPONENT_SCRIPT, str(Path(__file__).parent)],
            capture_output=True,
            text=True,
            timeout=60,  # a bound on a hang, not a speed check: the bug took minutes
            cwd=tmp_path,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
    except subprocess.TimeoutExpired:
        pytest.fail("check-budget with tokens_input 1e999999999 hung for a minute")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("422 "), done.stdout


# -- text PostgreSQL cannot store, JSON the decoder cannot nest -------------------------------

PATH_OPERATIONS = [op for op in OPERATIONS if "{user_id}" in op.path]


@pytest.mark.parametrize("op", WRITES, ids=lambda op: f"{op.method} {op.path}")
def test_json_nested_too_deeply_is_400_not_a_crash(shared_client, op):
    """Arrays in arrays, 20,000 deep (40 KB): the decoder's recursion runs out; a 400."""
    body = '{"user_id":' + "[" * 20_000 + "]" * 20_000 + "}"
    before = snapshot(shared_client, "alice")
    reply = call(shared_client, op.method.upper(), _path(op), headers=_headers(op), body=body)
    assert_rejected(reply, 400, "invalid_json")
    assert "nested too deeply" in reply["message"]
    assert snapshot(shared_client, "alice") == before


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/check-budget", '{"user_id":"al\\u0000ice","cost_estimate":1}', "user_id"),
        ("/api/log-usage", '{"user_id":"alice","model":"m\\u0000","request_id":"r"}', "model"),
        ("/api/release-reservation", '{"request_id":"\\u0000"}', "request_id"),
    ],
    ids=["user id", "model", "request id"],
)
def test_nul_in_body_text_is_422_on_every_store(shared_client, path, body, field):
    """PostgreSQL cannot store U+0000 in text (it failed as a 503); both stores refuse it."""
    before = snapshot(shared_client, "alice")
    reply = call(shared_client, "POST", path, headers=API, body=body)
    assert_rejected(reply, 422, "validation_error", field=field)
    assert "NUL" in reply["message"]
    assert "\x00" not in reply.text and "\\u0000" not in reply.text
    assert snapshot(shared_client, "alice") == before


@pytest.mark.parametrize(
    "extra",
    [
        '"x":["\\u0000"]',
        '"\\u0000":1',
        '"sec\\u0000ret-key-name":"sec\\u0000ret value"',
        '"x":{"\\u0000":"\\u0000"}',
    ],
    ids=["in an ignored value", "an ignored key", "ignored key and value", "nested"],
)
def test_nul_in_an_ignored_key_is_not_refused_nor_quoted(shared_client, extra):
    """Keys the model ignores never reach a store: a NUL in one is no reason to refuse."""
    body = '{"user_id":"alice","cost_estimate":1,' + extra + "}"
    reply = call(shared_client, "POST", "/api/check-budget", headers=API, body=body)
    assert reply.status == 200, reply.body
    assert reply["allowed"] is True
    assert "sec" not in reply.text and "\\u0000" not in reply.text


def test_an_escaped_backslash_before_u0000_is_text_not_nul(shared_client):
    body = '{"user_id":"alice","cost_estimate":1,"request_id":"r-\\\\u0000"}'
    reply = call(shared_client, "POST", "/api/check-budget", headers=API, body=body)
    assert reply.status == 200
    assert reply["reservation"]["request_id"] == "r-\\u0000"
    release = call(
        shared_client,
        "POST",
        "/api/release-reservation",
        headers=API,
        body='{"request_id":"r-\\\\u0000"}',
    )
    assert release.status == 200


@pytest.mark.parametrize("op", PATH_OPERATIONS, ids=lambda op: f"{op.method} {op.path}")
def test_an_id_with_nul_in_the_path_is_404(shared_client, op):
    before = snapshot(shared_client, "alice")
    body = '{"status":"active"}' if op.method == "patch" else '{"amount":1,"reason":"r"}'
    reply = call(
        shared_client,
        op.method.upper(),
        op.path.replace("{user_id}", "al%00ice"),
        headers=_headers(op),
        body=None if op.method == "get" else body,
    )
    assert_rejected(reply, 404, "not_found")
    assert snapshot(shared_client, "alice") == before
