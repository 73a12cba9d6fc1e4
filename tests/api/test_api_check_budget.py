"""POST /api/check-budget and /api/release-reservation: seed shape, statuses, holds."""

from decimal import Decimal

import pytest
from api_helpers import (
    ADMIN,
    API,
    TTL_SECONDS,
    assert_rejected,
    call,
    check,
    figures,
    log_usage,
    provision,
    release,
    snapshot,
)

D = Decimal


def budget(total, used, remaining, reserved=None):
    out = {"total": D(total), "used": D(used), "remaining": D(remaining)}
    if reserved is not None:
        out["reserved"] = D(reserved)
    return out


def test_the_original_body_shape_gets_the_original_answer(client, alice):
    reply = call(
        client,
        "POST",
        "/api/check-budget",
        headers=API,
        body='{"user_id":"alice","model":"gpt-4o","tokens_input":1200,"tokens_output":300,'
        '"cost_estimate":0.05}',
    )
    assert reply.status == 200
    assert set(reply.body) == {"allowed", "budget", "status", "message"}
    assert reply["allowed"] is True
    assert reply["status"] == "active"
    assert isinstance(reply["message"], str) and reply["message"]
    assert reply["budget"] == budget(10, 0, 10)


def test_a_check_without_request_id_is_read_only(client, alice):
    first = check(client, "alice", D("4"))
    second = check(client, "alice", D("4"))
    assert first.body == second.body
    assert first["budget"]["remaining"] == D("10")
    assert "reservation" not in first.body
    assert figures(client, "alice") == budget(10, 0, 10, 0)


def test_a_check_with_request_id_places_one_hold(client, alice):
    first = check(client, "alice", D("2.5"), request_id="req-1")
    assert first.status == 200
    assert first["allowed"] is True
    assert first["reservation"] == {
        "request_id": "req-1",
        "amount": D("2.5"),
        "expires_at": "2026-03-15T12:10:00.000Z",
    }
    assert first["budget"] == budget(10, 0, "7.5")
    assert figures(client, "alice") == budget(10, 0, "7.5", "2.5")

    # A retry (the gateway timed out and asks again): the same hold, counted once.
    retry = check(client, "alice", D("2.5"), request_id="req-1")
    assert retry.status == 200
    assert retry["allowed"] is True
    assert retry["reservation"] == first["reservation"]
    assert retry["budget"] == budget(10, 0, "7.5")
    assert figures(client, "alice") == budget(10, 0, "7.5", "2.5")


def test_the_same_hold_is_returned_on_a_later_retry_without_extending_it(env, alice):
    first = check(env.client, "alice", D("1"), request_id="req-1")
    env.clock.advance(30)
    again = check(env.client, "alice", D("1"), request_id="req-1")
    assert again["reservation"] == first["reservation"]
    assert figures(env.client, "alice")["reserved"] == D("1")


def test_a_request_id_reused_with_another_amount_or_user_is_a_conflict(client, alice, bob):
    assert check(client, "alice", D("2"), request_id="req-1").status == 200
    before = snapshot(client, "alice"), snapshot(client, "bob")
    other_amount = check(client, "alice", D("3"), request_id="req-1")
    assert_rejected(other_amount, 409, "idempotency_conflict")
    other_user = check(client, "bob", D("2"), request_id="req-1")
    assert_rejected(other_user, 409, "idempotency_conflict")
    assert (snapshot(client, "alice"), snapshot(client, "bob")) == before


def test_a_hold_settled_by_log_usage_is_closed(client, alice):
    assert check(client, "alice", D("2"), request_id="req-1").status == 200
    logged = log_usage(client, "alice", "req-1", D("1.5"))
    assert logged.status == 201
    assert logged["budget"] == budget(10, "1.5", "8.5")
    assert figures(client, "alice") == budget(10, "1.5", "8.5", 0)
    again = check(client, "alice", D("2"), request_id="req-1")
    assert_rejected(again, 409, "reservation_closed")
    assert figures(client, "alice") == budget(10, "1.5", "8.5", 0)


def test_a_request_id_already_logged_without_a_hold_cannot_get_one(client, alice):
    assert log_usage(client, "alice", "req-1", D("1")).status == 201
    reply = check(client, "alice", D("1"), request_id="req-1")
    assert_rejected(reply, 409, "reservation_closed")
    assert figures(client, "alice") == budget(10, 1, 9, 0)


def test_release_frees_the_hold_is_idempotent_and_closes_it(client, alice):
    assert check(client, "alice", D("2"), request_id="req-1").status == 200
    released = release(client, "req-1")
    assert released.status == 200
    assert released.body == {"request_id": "req-1", "released": D("2")}
    assert figures(client, "alice") == budget(10, 0, 10, 0)
    again = release(client, "req-1")
    assert again.status == 200
    assert again["request_id"] == "req-1"
    assert figures(client, "alice") == budget(10, 0, 10, 0)
    assert_rejected(check(client, "alice", D("2"), request_id="req-1"), 409, "reservation_closed")
    assert figures(client, "alice") == budget(10, 0, 10, 0)


def test_release_of_an_unknown_request_id_is_404(client, alice):
    reply = release(client, "never-seen")
    assert_rejected(reply, 404, "not_found")


def test_release_of_a_settled_hold_is_refused(client, alice):
    assert check(client, "alice", D("2"), request_id="req-1").status == 200
    assert log_usage(client, "alice", "req-1", D("1")).status == 201
    assert_rejected(release(client, "req-1"), 409, "reservation_closed")
    assert figures(client, "alice") == budget(10, 1, 9, 0)


def test_usage_after_a_release_is_still_recorded(client, alice):
    assert check(client, "alice", D("2"), request_id="req-1").status == 200
    assert release(client, "req-1").status == 200
    assert log_usage(client, "alice", "req-1", D("0.7")).status == 201
    assert figures(client, "alice") == budget(10, "0.7", "9.3", 0)


def test_a_hold_expires_after_the_ttl(env, alice):
    client = env.client
    assert check(client, "alice", D("4"), request_id="req-1").status == 200
    env.clock.advance(TTL_SECONDS - 1)
    assert figures(client, "alice") == budget(10, 0, 6, 4)
    env.clock.advance(2)
    assert figures(client, "alice") == budget(10, 0, 10, 0)
    again = check(client, "alice", D("4"), request_id="req-1")
    assert_rejected(again, 409, "reservation_closed")
    fresh = check(client, "alice", D("10"), request_id="req-2")
    assert fresh["allowed"] is True
    assert fresh["budget"] == budget(10, 0, 0)
    assert figures(client, "alice") == budget(10, 0, 0, 10)


def test_cost_estimate_may_be_omitted_for_a_priced_model(client, alice):
    payload = {
        "user_id": "alice",
        "model": "gpt-4o",
        "tokens_input": 10,
        "tokens_output": 20,
        "request_id": "req-1",
    }
    reply = call(client, "POST", "/api/check-budget", headers=API, json_body=payload)
    assert reply.status == 200
    assert reply["allowed"] is True
    assert reply["reservation"]["amount"] == D("0.000225")
    assert reply["budget"]["remaining"] == D("9.999775")
    read_only = {k: v for k, v in payload.items() if k != "request_id"}
    assert (
        call(client, "POST", "/api/check-budget", headers=API, json_body=read_only)["allowed"]
        is True
    )


@pytest.mark.parametrize(
    "payload",
    [
        {"user_id": "alice", "model": "no-such-model", "tokens_input": 10, "tokens_output": 20},
        {"user_id": "alice", "tokens_input": 10, "tokens_output": 20},
        {"user_id": "alice", "model": "no-such-model", "request_id": "req-1"},
    ],
    ids=["unknown model", "no model", "unknown model with request_id"],
)
def test_no_estimate_and_no_known_price_is_422_naming_cost_estimate(client, alice, payload):
    before = snapshot(client, "alice")
    reply = call(client, "POST", "/api/check-budget", headers=API, json_body=payload)
    assert_rejected(reply, 422, "validation_error", field="cost_estimate")
    assert "cost_estimate" in reply["message"]
    assert snapshot(client, "alice") == before


@pytest.mark.parametrize("request_id", [None, "req-1"])
def test_an_unknown_user_is_404_with_the_check_shape(client, plan, request_id):
    reply = check(client, "nobody", D("1"), request_id=request_id)
    assert_rejected(reply, 404, "not_found")
    assert reply["allowed"] is False
    assert reply["status"] == "not_found"
    assert set(reply["budget"]) == {"total", "used", "remaining"}
    assert "reservation" not in reply.body


def test_an_estimate_must_fit_in_what_remains(client, alice):
    assert check(client, "alice", D("10"))["status"] == "active"
    over = check(client, "alice", D("10.000000001"))
    assert over["allowed"] is False
    assert over["status"] == "exceeded"
    assert over["budget"] == budget(10, 0, 10)


def test_an_exceeded_user_gets_no_hold(client, alice):
    assert log_usage(client, "alice", "spent", D("10")).status == 201
    for estimate in (D("0"), D("0.01")):
        reply = check(client, "alice", estimate, request_id=f"req-{estimate}")
        assert reply.status == 200
        assert reply["allowed"] is False
        assert reply["status"] == "exceeded"
        assert reply["budget"] == budget(10, 10, 0)
        assert "reservation" not in reply.body
    assert figures(client, "alice") == budget(10, 10, 0, 0)


def test_holds_count_against_what_remains(client, alice):
    assert check(client, "alice", D("6"), request_id="req-1")["allowed"] is True
    refused = check(client, "alice", D("5"), request_id="req-2")
    assert refused["status"] == "exceeded"
    assert "reservation" not in refused.body
    assert check(client, "alice", D("4"), request_id="req-3")["allowed"] is True
    assert figures(client, "alice") == budget(10, 0, 0, 10)


def test_a_suspended_user_is_refused_and_can_be_reactivated(client, alice):
    patched = call(
        client, "PATCH", "/api/admin/users/alice", headers=ADMIN, json_body={"status": "suspended"}
    )
    assert patched.status == 200
    reply = check(client, "alice", D("1"), request_id="req-1")
    assert reply.status == 200
    assert reply["allowed"] is False
    assert reply["status"] == "suspended"
    assert "reservation" not in reply.body
    assert figures(client, "alice")["reserved"] == 0
    call(client, "PATCH", "/api/admin/users/alice", headers=ADMIN, json_body={"status": "active"})
    assert check(client, "alice", D("1"))["status"] == "active"


def test_a_tenant_cap_is_shared_by_its_users(client, plan):
    created = call(
        client,
        "POST",
        "/api/admin/tenants",
        headers=ADMIN,
        json_body={"id": "acme", "name": "Acme", "monthly_budget": 1},
    )
    assert created.status == 201
    assert provision(client, "u1", tenant_id="acme").status == 201
    assert provision(client, "u2", tenant_id="acme").status == 201
    assert log_usage(client, "u1", "u1-a", D("0.6")).status == 201

    refused = check(client, "u2", D("0.5"))
    assert refused["allowed"] is False
    assert refused["status"] == "tenant_exceeded"
    assert refused["budget"] == budget(10, 0, 10)  # u2's own budget is untouched
    assert check(client, "u2", D("0.4"))["status"] == "active"

    # A hold by one user takes room from the other.
    assert check(client, "u1", D("0.4"), request_id="u1-b")["allowed"] is True
    after_hold = check(client, "u2", D("0.01"), request_id="u2-a")
    assert after_hold["status"] == "tenant_exceeded"
    assert "reservation" not in after_hold.body
    assert figures(client, "u2")["reserved"] == 0
