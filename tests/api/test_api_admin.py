"""Admin routes: reset-budgets, provision-user, products, tenants, users and credits."""

import logging
from decimal import Decimal

import pytest
from api_helpers import (
    ADMIN,
    API,
    PASSWORD,
    START_ISO,
    START_LABEL,
    assert_rejected,
    budget_view,
    call,
    check,
    figures,
    log_usage,
    provision,
    put_product,
    snapshot,
)

D = Decimal


def reset(client, period=None, body=None):
    if body is not None:
        return call(client, "POST", "/api/admin/reset-budgets", headers=ADMIN, body=body)
    if period is None:
        return call(client, "POST", "/api/admin/reset-budgets", headers=ADMIN)
    return call(
        client, "POST", "/api/admin/reset-budgets", headers=ADMIN, json_body={"period": period}
    )


def grant(client, user_id, amount, reason="goodwill", grant_id=None):
    payload = {"amount": amount, "reason": reason}
    if grant_id is not None:
        payload["grant_id"] = grant_id
    return call(
        client, "POST", f"/api/admin/users/{user_id}/credits", headers=ADMIN, json_body=payload
    )


# -- reset-budgets -----------------------------------------------------------------------


def test_reset_without_a_body_closes_every_open_period(client, alice, bob):
    assert log_usage(client, "alice", "r1", D("3")).status == 201
    assert grant(client, "alice", D("5")).status == 201
    assert figures(client, "alice")["total"] == D("15")
    reply = reset(client)
    assert reply.status == 200
    assert set(reply.body) == {"message", "users_reset", "period", "already_done"}
    assert isinstance(reply["message"], str) and reply["message"]
    assert reply["users_reset"] == 2
    assert reply["period"] == START_LABEL
    assert reply["already_done"] is False
    assert figures(client, "alice") == {"total": 10, "used": 0, "remaining": 10, "reserved": 0}
    # Unconditional: a second call without a body resets again.
    again = reset(client)
    assert again["users_reset"] == 2
    assert again["already_done"] is False


def test_an_empty_object_is_the_same_as_no_body(client, alice):
    reply = reset(client, body="{}")
    assert reply.status == 200
    assert reply["already_done"] is False
    assert reply["period"] == START_LABEL


def test_reset_without_a_body_marks_no_label_as_applied(client, alice):
    assert reset(client)["period"] == START_LABEL
    labelled = reset(client, body=f'{{"period": "{START_LABEL}", "force": true}}')
    assert labelled["already_done"] is False
    assert labelled["users_reset"] == 1


def test_the_current_month_follows_the_clock(env, alice):
    env.clock.advance(20 * 24 * 3600)  # 2026-04-04
    assert reset(env.client)["period"] == "2026-04"
    view = budget_view(env.client, "alice")
    assert view["period"] == {
        "label": "2026-04",
        "start": "2026-04-04T12:00:00.000Z",
        "end": "2026-05-01T00:00:00.000Z",
    }


def test_a_label_is_applied_at_most_once(env, alice):
    client = env.client
    assert log_usage(client, "alice", "r1", D("3")).status == 201
    env.clock.advance(20 * 24 * 3600)  # 2026-04-04
    first = reset(client, "2026-04")
    assert first.status == 200
    assert first["users_reset"] == 1
    assert first["period"] == "2026-04"
    assert first["already_done"] is False
    assert budget_view(client, "alice")["period"]["label"] == "2026-04"

    assert log_usage(client, "alice", "r2", D("2")).status == 201
    before = snapshot(client, "alice")
    second = reset(client, "2026-04")
    assert second.status == 200
    assert second["already_done"] is True
    assert second["users_reset"] == 0
    assert second["period"] == "2026-04"
    assert snapshot(client, "alice") == before
    assert figures(client, "alice")["used"] == D("2")


@pytest.mark.parametrize("label", ["2026-13", "2026-00", "2026-1", "26-12", "2026/12", "", 202612])
def test_a_bad_label_is_422(shared_client, label):
    client = shared_client
    before = snapshot(client, "alice")
    reply = reset(client, label)
    assert_rejected(reply, 422, "validation_error", field="period")
    assert snapshot(client, "alice") == before


@pytest.mark.parametrize(
    ("period", "reason", "valid"),
    [
        (START_LABEL, "nothing_due", "2026-04"),  # every period began this month
        ("2026-07", "future_period", "2026-04"),
        ("2026-02", "earlier_than_open_periods", "2026-04"),
    ],
)
def test_a_reset_that_could_only_destroy_a_month_is_409_and_changes_nothing(
    client, alice, period, reason, valid
):
    assert log_usage(client, "alice", "r1", D("3")).status == 201
    before = snapshot(client, "alice")
    reply = reset(client, period)
    assert_rejected(reply, 409, "reset_refused")
    assert (reply["reason"], reply["period"], reply["valid_period"]) == (reason, period, valid)
    assert f"the next valid period is {valid}" in reply["message"]
    assert snapshot(client, "alice") == before


def test_force_applies_a_refused_period_and_closes_every_open_period(client, alice):
    assert log_usage(client, "alice", "r1", D("3")).status == 201
    reply = reset(client, body=f'{{"period": "{START_LABEL}", "force": true}}')
    assert reply.status == 200
    assert (reply["users_reset"], reply["period"]) == (1, START_LABEL)
    assert figures(client, "alice")["used"] == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [('{"force": true}', "force"), ('{"period": "2026-03", "force": "yes"}', "force")],
)
def test_force_needs_a_period_and_a_boolean(shared_client, body, field):
    before = snapshot(shared_client, "alice")
    assert_rejected(reset(shared_client, body=body), 422, "validation_error", field=field)
    assert snapshot(shared_client, "alice") == before


@pytest.mark.parametrize("period", ["2000-01", "9998-12"])
def test_every_view_reads_back_after_a_reset_at_a_bound_of_the_labels(env, alice, period):
    client = env.client
    assert log_usage(client, "alice", "r1", D("3")).status == 201
    env.clock.advance(1)
    assert reset(client, body=f'{{"period": "{period}", "force": true}}').status == 200
    env.clock.advance(1)
    assert log_usage(client, "alice", "r2", D("1")).status == 201
    view = budget_view(client, "alice")
    assert view["period"]["label"] == period
    for field in ("start", "end"):
        assert 2000 <= int(view["period"][field][:4]) <= 9999
    for group_by in ("model", "day"):
        usage = call(client, "GET", f"/api/users/alice/usage?group_by={group_by}", headers=API)
        assert usage.status == 200
        assert usage["total"]["cost"] == 1
    assert call(client, "GET", "/api/admin/users/alice", headers=ADMIN).status == 200


def test_holds_survive_a_reset(client, alice):
    assert check(client, "alice", D("2"), request_id="held").status == 200
    assert log_usage(client, "alice", "r1", D("3")).status == 201
    assert figures(client, "alice") == {"total": 10, "used": 3, "remaining": 5, "reserved": 2}
    assert reset(client)["users_reset"] == 1
    assert figures(client, "alice") == {"total": 10, "used": 0, "remaining": 8, "reserved": 2}
    assert check(client, "alice", D("2"), request_id="held")["reservation"]["amount"] == 2
    assert log_usage(client, "alice", "held", D("1.5")).status == 201
    assert figures(client, "alice") == {
        "total": 10,
        "used": D("1.5"),
        "remaining": D("8.5"),
        "reserved": 0,
    }


# -- provision-user ----------------------------------------------------------------------


def test_provision_user_returns_the_user_without_the_password(client, plan, caplog):
    caplog.set_level(logging.DEBUG)
    reply = provision(client, "carol", email="Carol@Example.com", tenant_id="acme")
    assert reply.status == 201
    assert reply.body == {
        "message": "User provisioned successfully",
        "user": {
            "id": "carol",
            "email": "Carol@Example.com",
            "product_id": "basic",
            "tenant_id": "acme",
            "status": "active",
            "budget": {"total": 10, "used": 0, "remaining": 10},
            "created_at": START_ISO,
        },
    }
    assert PASSWORD not in reply.text
    assert "password" not in reply.text
    assert PASSWORD not in caplog.text
    fetched = call(client, "GET", "/api/admin/users/carol", headers=ADMIN)
    assert fetched.body == reply["user"]
    assert PASSWORD not in fetched.text


def test_provision_user_defaults(client, plan):
    reply = call(
        client,
        "POST",
        "/api/admin/provision-user",
        headers=ADMIN,
        json_body={"email": "dave@example.com", "password": PASSWORD, "product_id": "basic"},
    )
    assert reply.status == 201
    user = reply["user"]
    assert user["tenant_id"] == "default"
    assert isinstance(user["id"], str) and user["id"]
    assert call(client, "GET", f"/api/admin/users/{user['id']}", headers=ADMIN).status == 200


def test_a_password_shorter_than_eight_characters_is_422(client, plan):
    reply = provision(client, "erin", password="7chars!")
    assert_rejected(reply, 422, "validation_error", field="password")
    assert "7chars!" not in reply.text
    assert call(client, "GET", "/api/admin/users/erin", headers=ADMIN).status == 404
    assert provision(client, "erin", password="8chars!!").status == 201


def test_a_duplicate_email_is_409_whatever_its_case(client, alice):
    before = snapshot(client, "alice")
    reply = provision(client, "alice2", email="ALICE@example.COM")
    assert_rejected(reply, 409)
    assert call(client, "GET", "/api/admin/users/alice2", headers=ADMIN).status == 404
    assert snapshot(client, "alice") == before


def test_a_duplicate_user_id_is_409(client, alice):
    before = snapshot(client, "alice")
    reply = provision(client, "alice", email="other@example.com")
    assert_rejected(reply, 409)
    assert snapshot(client, "alice") == before


def test_an_unknown_product_is_422_naming_it(client, plan):
    reply = provision(client, "frank", product_id="no-such-plan")
    assert_rejected(reply, 422, "validation_error", field="product_id")
    assert reply["message"] == "unknown product 'no-such-plan'"
    assert call(client, "GET", "/api/admin/users/frank", headers=ADMIN).status == 404


def test_create_tenant_false_refuses_an_unknown_tenant_naming_it(client, plan):
    body = {
        "email": "hal@example.com",
        "password": PASSWORD,
        "product_id": "basic",
        "user_id": "hal",
        "tenant_id": "acme-crop",
        "create_tenant": False,
    }
    reply = call(client, "POST", "/api/admin/provision-user", headers=ADMIN, json_body=body)
    assert_rejected(reply, 422, "validation_error", field="tenant_id")
    assert "unknown tenant 'acme-crop'" in reply["message"]
    assert call(client, "GET", "/api/admin/users/hal", headers=ADMIN).status == 404
    tenant = {"id": "acme-crop", "name": "Acme"}
    assert call(client, "POST", "/api/admin/tenants", headers=ADMIN, json_body=tenant).status == 201
    again = call(client, "POST", "/api/admin/provision-user", headers=ADMIN, json_body=body)
    assert again.status == 201
    defaulted = {**body, "email": "ida@example.com", "user_id": "ida", "tenant_id": "default"}
    reply = call(client, "POST", "/api/admin/provision-user", headers=ADMIN, json_body=defaulted)
    assert reply.status == 201  # the default tenant is created on first use


def test_find_a_user_by_email(client, alice):
    found = call(
        client, "GET", "/api/admin/users", headers=ADMIN, params={"email": "ALICE@example.com"}
    )
    assert found.status == 200
    assert found.body == call(client, "GET", "/api/admin/users/alice", headers=ADMIN).body
    none = call(
        client, "GET", "/api/admin/users", headers=ADMIN, params={"email": "zed@example.com"}
    )
    assert_rejected(none, 404, "not_found", field="email")
    for bad in ({"email": "not-an-email"}, {}):
        reply = call(client, "GET", "/api/admin/users", headers=ADMIN, params=bad)
        assert_rejected(reply, 422, "validation_error", field="email")
    keyless = call(client, "GET", "/api/admin/users", params={"email": "alice@example.com"})
    assert_rejected(keyless, 401)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"password": PASSWORD, "product_id": "basic"}, "email"),
        ({"email": "no-at-sign", "password": PASSWORD, "product_id": "basic"}, "email"),
        ({"email": "g@example.com", "product_id": "basic"}, "password"),
        ({"email": "g@example.com", "password": PASSWORD}, "product_id"),
    ],
)
def test_provision_user_validates_its_body(shared_client, payload, field):
    reply = call(
        shared_client, "POST", "/api/admin/provision-user", headers=ADMIN, json_body=payload
    )
    assert_rejected(reply, 422, "validation_error", field=field)


# -- products and tenants -----------------------------------------------------------------


def test_products_create_replace_and_list(client, alice):
    created = put_product(client, "pro", D("50"), "Pro")
    assert created.status == 201
    assert created.body == {"id": "pro", "name": "Pro", "monthly_budget": 50}
    replaced = put_product(client, "basic", "12.5", "Basic+")
    assert replaced.status == 200
    assert replaced.body == {"id": "basic", "name": "Basic+", "monthly_budget": D("12.5")}
    listed = call(client, "GET", "/api/admin/products", headers=ADMIN)
    assert listed.status == 200
    assert listed.body == {
        "products": [
            {"id": "basic", "name": "Basic+", "monthly_budget": D("12.5")},
            {"id": "pro", "name": "Pro", "monthly_budget": 50},
        ]
    }
    # A plan's budget is its users' total.
    assert figures(client, "alice")["total"] == D("12.5")


def test_tenants_create_and_replace(client):
    created = call(
        client,
        "POST",
        "/api/admin/tenants",
        headers=ADMIN,
        json_body={"id": "acme", "name": "Acme", "monthly_budget": "100.5"},
    )
    assert created.status == 201
    assert created.body == {"id": "acme", "name": "Acme", "monthly_budget": D("100.5")}
    replaced = call(
        client,
        "POST",
        "/api/admin/tenants",
        headers=ADMIN,
        json_body={"id": "acme", "name": "Acme Inc"},
    )
    assert replaced.status == 200
    assert replaced.body == {"id": "acme", "name": "Acme Inc", "monthly_budget": None}


def test_a_tenant_created_by_provisioning_can_be_capped_later(client, plan):
    assert provision(client, "gina", tenant_id="newco").status == 201
    capped = call(
        client,
        "POST",
        "/api/admin/tenants",
        headers=ADMIN,
        json_body={"id": "newco", "name": "NewCo", "monthly_budget": 1},
    )
    assert capped.status == 200  # it existed: provisioning created it
    assert check(client, "gina", D("1.5"))["status"] == "tenant_exceeded"


# -- users -------------------------------------------------------------------------------


def test_get_user(client, alice):
    reply = call(client, "GET", "/api/admin/users/alice", headers=ADMIN)
    assert reply.status == 200
    assert reply.body == {
        "id": "alice",
        "email": "alice@example.com",
        "product_id": "basic",
        "tenant_id": "default",
        "status": "active",
        "budget": {"total": 10, "used": 0, "remaining": 10},
        "created_at": START_ISO,
    }
    assert_rejected(call(client, "GET", "/api/admin/users/nobody", headers=ADMIN), 404, "not_found")


def test_patch_user_status_and_product(client, alice):
    assert put_product(client, "pro", 50, "Pro").status == 201
    suspended = call(
        client, "PATCH", "/api/admin/users/alice", headers=ADMIN, json_body={"status": "suspended"}
    )
    assert suspended.status == 200
    assert suspended["status"] == "suspended"
    moved = call(
        client,
        "PATCH",
        "/api/admin/users/alice",
        headers=ADMIN,
        json_body={"product_id": "pro", "status": "active"},
    )
    assert moved.status == 200
    assert moved["product_id"] == "pro"
    assert moved["status"] == "active"
    assert moved["budget"]["total"] == 50
    assert figures(client, "alice")["total"] == 50


@pytest.mark.parametrize(
    ("path", "payload", "status", "field"),
    [
        ("/api/admin/users/alice", {"product_id": "no-such-plan"}, 422, "product_id"),
        (
            "/api/admin/users/alice",
            {"product_id": "no-such-plan", "status": "suspended"},
            422,
            "product_id",
        ),
        ("/api/admin/users/alice", {"status": "deleted"}, 422, "status"),
        ("/api/admin/users/alice", {}, 422, None),
        ("/api/admin/users/nobody", {"status": "suspended"}, 404, None),
    ],
    ids=[
        "unknown product",
        "unknown product with status",
        "bad status",
        "nothing to change",
        "unknown user",
    ],
)
def test_patch_user_refusals_change_nothing(shared_client, path, payload, status, field):
    client = shared_client
    before = snapshot(client, "alice")
    reply = call(client, "PATCH", path, headers=ADMIN, json_body=payload)
    assert_rejected(reply, status, field=field)
    assert snapshot(client, "alice") == before


# -- credits -----------------------------------------------------------------------------


def test_a_credit_raises_the_total(client, alice):
    reply = grant(client, "alice", D("5.5"))
    assert reply.status == 201
    assert reply["result"] == "created"
    assert isinstance(reply["grant_id"], str) and reply["grant_id"]
    assert reply["user"]["budget"] == {"total": D("15.5"), "used": 0, "remaining": D("15.5")}
    assert figures(client, "alice")["total"] == D("15.5")
    # Without a grant_id every call is a new grant.
    assert grant(client, "alice", D("1"))["user"]["budget"]["total"] == D("16.5")


def test_a_credit_with_a_grant_id_counts_once(client, alice):
    first = grant(client, "alice", D("5"), grant_id="g-1")
    assert first.status == 201
    assert first["grant_id"] == "g-1"
    before = snapshot(client, "alice")
    replay = grant(client, "alice", D("5"), grant_id="g-1")
    assert replay.status == 200
    assert replay["result"] == "exists"
    assert replay["grant_id"] == "g-1"
    assert replay["user"]["budget"]["total"] == 15
    for other in ({"amount": D("6")}, {"reason": "other reason"}):
        conflict = grant(client, "alice", **{"amount": D("5"), "grant_id": "g-1", **other})
        assert_rejected(conflict, 409, "idempotency_conflict")
    assert snapshot(client, "alice") == before


def test_a_grant_id_of_another_user_is_a_conflict(client, alice, bob):
    assert grant(client, "alice", D("5"), grant_id="g-1").status == 201
    before = snapshot(client, "bob")
    assert_rejected(grant(client, "bob", D("5"), grant_id="g-1"), 409, "idempotency_conflict")
    assert snapshot(client, "bob") == before


@pytest.mark.parametrize(
    ("user_id", "payload", "status", "field"),
    [
        ("alice", {"amount": 0, "reason": "nothing"}, 422, "amount"),
        ("alice", {"amount": "0.0000000001", "reason": "rounds to nothing"}, 422, "amount"),
        ("alice", {"amount": -1, "reason": "take back"}, 422, "amount"),
        ("alice", {"amount": 1}, 422, "reason"),
        ("nobody", {"amount": 1, "reason": "ghost"}, 404, None),
    ],
    ids=["zero", "rounds to zero", "negative", "no reason", "unknown user"],
)
def test_credit_refusals_change_nothing(shared_client, user_id, payload, status, field):
    client = shared_client
    before = snapshot(client, "alice")
    reply = call(
        client, "POST", f"/api/admin/users/{user_id}/credits", headers=ADMIN, json_body=payload
    )
    assert_rejected(reply, status, field=field)
    assert snapshot(client, "alice") == before
