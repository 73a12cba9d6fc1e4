"""Dashboard reads with X-API-Key: GET /api/users/{id}/budget and GET /api/users/{id}/usage."""

from decimal import Decimal

import pytest
from api_helpers import (
    ADMIN,
    API,
    START_ISO,
    assert_rejected,
    call,
    check,
    log_usage,
    provision,
    put_product,
)

D = Decimal
DAY_SECONDS = 24 * 3600


def test_budget_view_shape_and_figures(client, alice):
    assert check(client, "alice", D("2"), request_id="held").status == 200
    assert log_usage(client, "alice", "r1", D("1")).status == 201
    reply = call(client, "GET", "/api/users/alice/budget", headers=API)
    assert reply.status == 200
    assert reply.body == {
        "user_id": "alice",
        "status": "active",
        "budget": {"total": 10, "used": 1, "remaining": 7, "reserved": 2},
        "period": {"label": "2026-03", "start": START_ISO, "end": "2026-04-01T00:00:00.000Z"},
    }


def test_budget_view_of_an_unknown_user_is_404(client, plan):
    assert_rejected(call(client, "GET", "/api/users/nobody/budget", headers=API), 404, "not_found")


def _three_calls(env):
    assert (
        log_usage(env.client, "alice", "r1", D("0.1"), tokens_input=10, tokens_output=20).status
        == 201
    )
    env.clock.advance(DAY_SECONDS)  # 2026-03-16 12:00
    assert (
        log_usage(env.client, "alice", "r2", D("0.2"), tokens_input=5, tokens_output=5).status
        == 201
    )
    assert (
        log_usage(
            env.client,
            "alice",
            "r3",
            D("0.3"),
            model="claude-3-5-haiku-20241022",
            tokens_input=1,
            tokens_output=2,
        ).status
        == 201
    )


def test_usage_by_model(env, alice):
    _three_calls(env)
    for params in ({"group_by": "model"}, None):
        reply = call(env.client, "GET", "/api/users/alice/usage", headers=API, params=params)
        assert reply.status == 200
        assert reply["user_id"] == "alice"
        assert reply["group_by"] == "model"
        assert reply["from"] == START_ISO
        assert reply["groups"] == [
            {
                "key": "claude-3-5-haiku-20241022",
                "requests": 1,
                "tokens_input": 1,
                "tokens_output": 2,
                "cost": D("0.3"),
            },
            {
                "key": "gpt-4o",
                "requests": 2,
                "tokens_input": 15,
                "tokens_output": 25,
                "cost": D("0.3"),
            },
        ]
        assert reply["total"] == {
            "key": "total",
            "requests": 3,
            "tokens_input": 16,
            "tokens_output": 27,
            "cost": D("0.6"),
        }


def test_usage_by_day_with_a_date_range(env, alice):
    _three_calls(env)
    client = env.client
    everything = call(
        client,
        "GET",
        "/api/users/alice/usage",
        headers=API,
        params={"group_by": "day", "from": "2026-03-01", "to": "2026-04-01"},
    )
    assert everything.status == 200
    assert everything["from"] == "2026-03-01T00:00:00.000Z"
    assert everything["to"] == "2026-04-01T00:00:00.000Z"
    assert [(g["key"], g["requests"], g["cost"]) for g in everything["groups"]] == [
        ("2026-03-15", 1, D("0.1")),
        ("2026-03-16", 2, D("0.5")),
    ]
    assert everything["total"]["cost"] == D("0.6")

    one_day = call(
        client,
        "GET",
        "/api/users/alice/usage",
        headers=API,
        params={"group_by": "day", "from": "2026-03-16", "to": "2026-03-17"},
    )
    assert [g["key"] for g in one_day["groups"]] == ["2026-03-16"]
    assert one_day["total"]["requests"] == 2

    as_times = call(
        client,
        "GET",
        "/api/users/alice/usage",
        headers=API,
        params={
            "group_by": "day",
            "from": "2026-03-16T00:00:00Z",
            "to": "2026-03-17T00:00:00.000Z",
        },
    )
    assert as_times.body == one_day.body

    nothing = call(
        client,
        "GET",
        "/api/users/alice/usage",
        headers=API,
        params={"group_by": "model", "from": "2026-02-01", "to": "2026-03-01"},
    )
    assert nothing["groups"] == []
    assert nothing["total"] == {
        "key": "total",
        "requests": 0,
        "tokens_input": 0,
        "tokens_output": 0,
        "cost": 0,
    }


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"group_by": "week"}, "group_by"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-02-30"}, "to"),
        ({"from": "2026-03-10", "to": "2026-03-01"}, "to"),
        ({"from": "2024-01-01", "to": "2026-01-01"}, "to"),
        ({"from": "0001-01-01", "to": "0001-01-02"}, "from"),
        ({"from": "1999-12-31T23:59:59+00:00"}, "from"),
        ({"from": "9998-12-31", "to": "9999-12-31T23:00:00-14:00"}, "to"),
    ],
    ids=[
        "bad group_by",
        "bad from",
        "bad to",
        "to before from",
        "range too long",
        "year 1",
        "before 2000",
        "after 9998",
    ],
)
def test_bad_usage_queries_are_422(shared_client, params, field):
    reply = call(shared_client, "GET", "/api/users/alice/usage", headers=API, params=params)
    assert_rejected(reply, 422, "validation_error", field=field)


def test_usage_of_an_unknown_user_is_404(client, plan):
    assert_rejected(call(client, "GET", "/api/users/nobody/usage", headers=API), 404, "not_found")


def test_periods_and_days_follow_budget_timezone(make_env, clock):
    """Labels, period bounds and usage days are in BUDGET_TIMEZONE, times in the API in UTC."""
    env = make_env(budget_timezone="America/New_York")
    client = env.client
    clock.now_ms = 1775008800000  # 2026-04-01T02:00:00Z = 2026-03-31 22:00 in New York
    assert put_product(client).status == 201
    assert provision(client, "ny").status == 201
    view = call(client, "GET", "/api/users/ny/budget", headers=API).body
    assert view["period"] == {
        "label": "2026-03",
        "start": "2026-04-01T02:00:00.000Z",
        "end": "2026-04-01T04:00:00.000Z",
    }
    assert log_usage(client, "ny", "r1", D("1")).status == 201
    days = call(client, "GET", "/api/users/ny/usage", headers=API, params={"group_by": "day"})
    assert [group["key"] for group in days["groups"]] == ["2026-03-31"]
    reset = call(client, "POST", "/api/admin/reset-budgets", headers=ADMIN)
    assert reset["period"] == "2026-03"
