"""POST /api/log-usage and money in and out: exact decimals, rounding, bounds, replays."""

from decimal import Decimal

import pytest
from api_helpers import (
    ADMIN,
    API,
    assert_rejected,
    call,
    check,
    figures,
    log_usage,
    snapshot,
    usage_total,
)

D = Decimal
LOGGED = "Usage logged and budget updated successfully"


def test_first_log_is_201_created_and_counts_the_cost(client, alice):
    reply = log_usage(client, "alice", "req-1", D("1.25"))
    assert reply.status == 201
    assert reply["message"] == LOGGED
    assert reply["result"] == "created"
    assert reply["budget"] == {"total": 10, "used": D("1.25"), "remaining": D("8.75")}
    assert figures(client, "alice") == {
        "total": 10,
        "used": D("1.25"),
        "remaining": D("8.75"),
        "reserved": 0,
    }


def test_an_identical_replay_is_200_exists_and_changes_nothing(client, alice):
    assert log_usage(client, "alice", "req-1", D("1.25")).status == 201
    before = snapshot(client, "alice")
    replay = log_usage(client, "alice", "req-1", D("1.25"))
    assert replay.status == 200
    assert replay["result"] == "exists"
    assert replay["budget"] == {"total": 10, "used": D("1.25"), "remaining": D("8.75")}
    # response_time is telemetry, not part of what a replay must match
    assert log_usage(client, "alice", "req-1", D("1.25"), response_time=1).status == 200
    # the same cost written differently is the same cost
    assert log_usage(client, "alice", "req-1", "1.250").status == 200
    assert snapshot(client, "alice") == before
    assert usage_total(client, "alice")["requests"] == 1


@pytest.mark.parametrize(
    "change",
    [
        {"cost_total": D("1.26")},
        {"model": "gpt-4o-mini"},
        {"tokens_input": 101},
        {"tokens_output": 49},
    ],
    ids=["cost", "model", "tokens_input", "tokens_output"],
)
def test_the_same_request_id_with_other_content_is_a_conflict(client, alice, change):
    assert log_usage(client, "alice", "req-1", D("1.25")).status == 201
    before = snapshot(client, "alice")
    payload = {"cost_total": D("1.25"), **change}
    reply = log_usage(client, "alice", "req-1", **payload)
    assert_rejected(reply, 409, "idempotency_conflict")
    assert snapshot(client, "alice") == before


def test_the_same_request_id_for_another_user_is_a_conflict(client, alice, bob):
    assert log_usage(client, "alice", "req-1", D("1.25")).status == 201
    before = snapshot(client, "alice"), snapshot(client, "bob")
    assert_rejected(log_usage(client, "bob", "req-1", D("1.25")), 409, "idempotency_conflict")
    assert (snapshot(client, "alice"), snapshot(client, "bob")) == before


def test_log_usage_for_an_unknown_user_is_404(client, alice):
    assert_rejected(log_usage(client, "nobody", "req-1", D("1")), 404, "not_found")
    # the request_id was not consumed
    assert log_usage(client, "alice", "req-1", D("1")).status == 201


def test_request_id_is_required(client, alice):
    before = snapshot(client, "alice")
    payload = {
        "user_id": "alice",
        "model": "gpt-4o",
        "tokens_input": 1,
        "tokens_output": 1,
        "cost_total": 1,
    }
    reply = call(client, "POST", "/api/log-usage", headers=API, json_body=payload)
    assert_rejected(reply, 422, "validation_error", field="request_id")
    assert "request_id" in reply["message"]
    assert snapshot(client, "alice") == before


def test_cost_total_omitted_is_priced_from_the_table(client, alice):
    reply = log_usage(client, "alice", "req-1", None, tokens_input=10, tokens_output=20)
    assert reply.status == 201
    assert reply["budget"]["used"] == D("0.000225")
    assert usage_total(client, "alice")["cost"] == D("0.000225")


def test_cost_total_omitted_for_an_unknown_model_is_422(client, alice):
    before = snapshot(client, "alice")
    reply = log_usage(client, "alice", "req-1", None, model="no-such-model")
    assert_rejected(reply, 422, "validation_error", field="cost_total")
    assert snapshot(client, "alice") == before


def test_usage_is_recorded_past_the_budget_and_remaining_goes_negative(client, alice):
    assert log_usage(client, "alice", "req-1", D("9")).status == 201
    reply = log_usage(client, "alice", "req-2", D("3.5"))
    assert reply.status == 201
    assert reply["budget"] == {"total": 10, "used": D("12.5"), "remaining": D("-2.5")}
    refused = check(client, "alice", D("0"))
    assert refused["allowed"] is False
    assert refused["status"] == "exceeded"
    assert refused["budget"]["remaining"] == D("-2.5")


def test_usage_of_a_suspended_user_is_still_recorded(client, alice):
    call(
        client, "PATCH", "/api/admin/users/alice", headers=ADMIN, json_body={"status": "suspended"}
    )
    assert log_usage(client, "alice", "req-1", D("2")).status == 201
    assert figures(client, "alice")["used"] == D("2")


# -- money -------------------------------------------------------------------------------


def test_three_times_a_tenth_is_exactly_three_tenths(client, alice):
    for number in range(3):
        reply = call(
            client,
            "POST",
            "/api/log-usage",
            headers=API,
            body=f'{{"user_id":"alice","model":"gpt-4o","request_id":"r{number}","cost_total":0.1}}',
        )
        assert reply.status == 201
    assert reply["budget"]["used"] == D("0.3")
    assert '"used":0.3,' in reply.text
    assert figures(client, "alice")["used"] == D("0.3")
    assert figures(client, "alice")["remaining"] == D("9.7")
    assert usage_total(client, "alice")["cost"] == D("0.3")


def test_a_binary_float_cost_is_rounded_to_nine_places(client, alice):
    reply = call(
        client,
        "POST",
        "/api/log-usage",
        headers=API,
        body='{"user_id":"alice","model":"gpt-4o","request_id":"r1",'
        '"cost_total":0.00022500000000000002}',
    )
    assert reply.status == 201
    assert reply["budget"]["used"] == D("0.000225")
    assert "0.00022500000000000002" not in reply.text
    assert figures(client, "alice")["remaining"] == D("9.999775")


@pytest.mark.parametrize(
    ("cost", "counted"),
    [
        ("0.0000000005", "0"),
        ("0.0000000015", "0.000000002"),
        ("0.0000000025", "0.000000002"),
        ("0.0000000025000001", "0.000000003"),
        # Above a tie only in its 27th digit: read through a float, it would be the tie itself.
        ("0.00000000250000000000000001", "0.000000003"),
        ("1.1234567894", "1.123456789"),
    ],
)
def test_more_than_nine_places_round_half_even(client, alice, cost, counted):
    reply = call(
        client,
        "POST",
        "/api/log-usage",
        headers=API,
        body=f'{{"user_id":"alice","model":"gpt-4o","request_id":"r1","cost_total":{cost}}}',
    )
    assert reply.status == 201
    assert reply["budget"]["used"] == D(counted)


def test_decimal_strings_are_accepted(client, alice):
    assert log_usage(client, "alice", "r1", "0.1").status == 201
    assert log_usage(client, "alice", "r2", "0.2").status == 201
    assert check(client, "alice", "9.7")["allowed"] is True
    assert check(client, "alice", "9.700000001")["allowed"] is False
    assert figures(client, "alice")["used"] == D("0.3")


def test_negative_zero_is_zero(client, alice):
    reply = call(
        client,
        "POST",
        "/api/check-budget",
        headers=API,
        body='{"user_id":"alice","cost_estimate":-0,"request_id":"r1"}',
    )
    assert reply.status == 200
    assert reply["reservation"]["amount"] == 0
    assert '"amount":0,' in reply.text


def test_the_largest_cost_of_one_call_is_accepted(client, alice):
    reply = log_usage(client, "alice", "r1", "1000000")
    assert reply.status == 201
    assert reply["budget"]["remaining"] == D("-999990")


@pytest.mark.parametrize(
    ("path", "template", "field"),
    [
        (
            "/api/log-usage",
            '{"user_id":"alice","model":"m","request_id":"r","cost_total":%s}',
            "cost_total",
        ),
        (
            "/api/check-budget",
            '{"user_id":"alice","cost_estimate":%s,"request_id":"r"}',
            "cost_estimate",
        ),
    ],
)
@pytest.mark.parametrize("literal", ["1000000.000000001", '"1000001"', "1e9", "1e999"])
def test_a_cost_past_the_largest_of_one_call_is_amount_out_of_range(
    shared_client, path, template, field, literal
):
    before = snapshot(shared_client, "alice")
    reply = call(shared_client, "POST", path, headers=API, body=template % literal)
    assert_rejected(reply, 422, "amount_out_of_range", field=field)
    assert reply["bound"] == 1_000_000
    assert "COST_PER_CALL_MAX" in reply["message"]
    assert snapshot(shared_client, "alice") == before


# Each with the statuses it may get and the error code of a 422.
BAD_AMOUNTS = [
    pytest.param("-0.01", (422,), "validation_error", id="negative"),
    pytest.param("1000000000.000000001", (422,), "amount_out_of_range", id="over the maximum"),
    pytest.param("1e999", (422,), "amount_out_of_range", id="overflows a float"),
    pytest.param("-1e999", (422,), "validation_error", id="overflows a float, negative"),
    pytest.param("NaN", (400, 422), "validation_error", id="NaN literal"),
    pytest.param("Infinity", (400, 422), "validation_error", id="Infinity literal"),
    pytest.param("-Infinity", (400, 422), "validation_error", id="-Infinity literal"),
    pytest.param('"NaN"', (422,), "validation_error", id="NaN string"),
    pytest.param('"Infinity"', (422,), "validation_error", id="Infinity string"),
    pytest.param('"-0.5"', (422,), "validation_error", id="negative string"),
    pytest.param('"ten"', (422,), "validation_error", id="not a number"),
    pytest.param("true", (422,), "validation_error", id="boolean"),
    pytest.param("[1]", (422,), "validation_error", id="array"),
]

AMOUNT_FIELDS = {
    "check-budget": (
        "POST",
        "/api/check-budget",
        "API",
        '{"user_id":"alice","model":"gpt-4o","cost_estimate":%s,"request_id":"r"}',
        "cost_estimate",
    ),
    "log-usage": (
        "POST",
        "/api/log-usage",
        "API",
        '{"user_id":"alice","model":"gpt-4o","request_id":"r","cost_total":%s}',
        "cost_total",
    ),
    "products": (
        "POST",
        "/api/admin/products",
        "ADMIN",
        '{"id":"basic","name":"Basic","monthly_budget":%s}',
        "monthly_budget",
    ),
    "tenants": (
        "POST",
        "/api/admin/tenants",
        "ADMIN",
        '{"id":"default","name":"Default","monthly_budget":%s}',
        "monthly_budget",
    ),
    "credits": (
        "POST",
        "/api/admin/users/alice/credits",
        "ADMIN",
        '{"amount":%s,"reason":"goodwill","grant_id":"g"}',
        "amount",
    ),
}


@pytest.mark.parametrize("endpoint", sorted(AMOUNT_FIELDS))
@pytest.mark.parametrize(("literal", "statuses", "code"), BAD_AMOUNTS)
def test_bad_amounts_are_refused_and_change_nothing(
    shared_client, endpoint, literal, statuses, code
):
    client = shared_client
    method, path, key, template, field = AMOUNT_FIELDS[endpoint]
    headers = API if key == "API" else ADMIN
    before = snapshot(client, "alice")
    reply = call(client, method, path, headers=headers, body=template % literal)
    assert reply.status in statuses, reply.body
    if reply.status == 422:
        assert_rejected(reply, 422, code, field=field)
    else:
        assert_rejected(reply, 400, "invalid_json")
    assert snapshot(client, "alice") == before
