"""Metrics at /metrics, request ids, the JSON request log, rate limits (429) and Redis health."""

import json
import logging
from decimal import Decimal

import pytest
from api_helpers import (
    ADMIN,
    ADMIN_KEY,
    API,
    API_KEY,
    PASSWORD,
    assert_rejected,
    call,
    check,
    log_usage,
    provision,
    put_product,
)
from prometheus_client.parser import text_string_to_metric_families

from api.auth import Access
from api.metrics import LATENCY_BUCKETS_SECONDS, Metrics
from api.observe import REQUEST_ID_LENGTH_MAX
from service.logs import JsonFormatter

METRICS_KEY = "metrics-key-mmmmmmmmmmmmmmmm"


def scrape(client, headers: dict[str, str] | None = None) -> dict[tuple, float]:
    """Every sample of GET /metrics as {(name, ((label, value), …)): value}."""
    result = client.simulate_get("/metrics", headers=headers or {})
    assert result.status_code == 200, result.text
    assert result.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(result.text)
        for sample in family.samples
    }


def value(samples: dict[tuple, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_by_route_template_decisions_holds_and_log_results(client, alice):
    check(client, alice, Decimal("1"))
    check(client, alice, Decimal("1"), request_id="hold-1")
    check(client, alice, Decimal("50"))
    check(client, "nobody", Decimal("1"))
    assert log_usage(client, alice, "log-1").status == 201
    assert log_usage(client, alice, "log-1").status == 200
    assert log_usage(client, alice, "log-1", Decimal("2")).status == 409
    call(client, "GET", f"/api/users/{alice}/budget", headers=API)
    client.simulate_get("/no/such/route")

    samples = scrape(client)
    requests = "billing_http_requests_total"
    assert value(samples, requests, method="POST", route="/api/check-budget", status="200") == 3
    assert value(samples, requests, method="POST", route="/api/check-budget", status="404") == 1
    assert value(samples, requests, method="POST", route="/api/log-usage", status="409") == 1
    budget_route = "/api/users/{user_id}/budget"
    assert value(samples, requests, method="GET", route=budget_route, status="200") == 1
    assert value(samples, requests, method="GET", route="unrouted", status="404") == 1
    latency = "billing_http_request_duration_seconds_count"
    assert value(samples, latency, method="POST", route="/api/check-budget") == 4
    decisions = "billing_budget_decisions_total"
    assert value(samples, decisions, decision="allowed", reason="active") == 2
    assert value(samples, decisions, decision="denied", reason="exceeded") == 1
    assert value(samples, decisions, decision="denied", reason="not_found") == 1
    results = "billing_log_usage_results_total"
    assert [value(samples, results, result=name) for name in ("created", "exists", "conflict")] == [
        1,
        1,
        1,
    ]
    assert value(samples, "billing_reservations_open") == 1
    assert not any(alice in str(labels) for _, labels in samples), "no user id in any label"


def test_latency_lands_in_the_bucket_of_its_first_bound_not_exceeded(env):
    """Counts are tallied and flushed in one go: each observation must still fall where
    prometheus-client's own ``observe`` would put it (``le`` is inclusive)."""
    metrics = Metrics()
    observed = [0.0001, 0.0005, 0.0007, 0.0025, 10.0, 11.0]
    for seconds in observed:
        metrics.observe_request("POST", "/api/check-budget", 200, seconds)
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.exposition(env.ledger).decode())
        for sample in family.samples
    }
    route = {"method": "POST", "route": "/api/check-budget"}
    bucket = "billing_http_request_duration_seconds_bucket"

    def cumulative(bound: str) -> float:
        return value(samples, bucket, le=bound, **route)

    assert cumulative("0.0005") == 2
    assert cumulative("0.001") == 3
    assert cumulative("0.0025") == 4
    assert cumulative(str(LATENCY_BUCKETS_SECONDS[-1])) == 5
    assert cumulative("+Inf") == 6
    assert value(samples, "billing_http_request_duration_seconds_count", **route) == 6
    assert value(samples, "billing_http_request_duration_seconds_sum", **route) == sum(observed)
    requests = "billing_http_requests_total"
    assert value(samples, requests, status="200", **route) == 6


def test_open_holds_gauge_follows_settle_and_expiry(env, alice):
    check(env.client, alice, Decimal("1"), request_id="hold-a")
    check(env.client, alice, Decimal("1"), request_id="hold-b")
    assert value(scrape(env.client), "billing_reservations_open") == 2
    assert log_usage(env.client, alice, "hold-a").status == 201
    assert value(scrape(env.client), "billing_reservations_open") == 1
    env.clock.advance(env.settings.reservation_ttl_seconds)
    assert value(scrape(env.client), "billing_reservations_open") == 0


def test_metrics_key_requires_a_bearer_token(make_env):
    client = make_env(metrics_key=METRICS_KEY).client
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": METRICS_KEY}):
        refused = client.simulate_get("/metrics", headers=headers)
        assert refused.status_code == 401
        assert refused.json["error"] == "unauthorized"
    assert scrape(client, {"Authorization": f"Bearer {METRICS_KEY}"})


def test_request_id_is_honoured_within_limits_else_generated(client):
    given = client.simulate_get("/", headers={"X-Request-ID": "gw-123.abc:7"})
    assert given.headers["x-request-id"] == "gw-123.abc:7"
    for refused in ("x" * (REQUEST_ID_LENGTH_MAX + 1), "bad id", "a\u00e9", ""):
        replaced = client.simulate_get("/", headers={"X-Request-ID": refused})
        assert replaced.headers["x-request-id"] not in (refused, "")
    first = client.simulate_get("/").headers["x-request-id"]
    second = client.simulate_get("/").headers["x-request-id"]
    assert first != second


def test_one_json_log_line_per_request_without_keys_or_passwords(client, caplog):
    formatter = JsonFormatter()
    with caplog.at_level(logging.INFO):
        put_product(client)
        provision(client, "carol")
        check(client, "carol", Decimal("1"), request_id="req-log")
        call(client, "GET", "/api/users/carol/budget", headers={"X-API-Key": "wrong-key-" * 3})
        call(client, "GET", "/api/admin/products", headers={"X-Admin-Key": API_KEY})
        client.simulate_get("/", headers={"X-Request-ID": "trace-42"})
    lines = [formatter.format(record) for record in caplog.records]
    requests = [json.loads(line) for line in lines if '"logger":"billing.request"' in line]
    assert len(requests) == 6
    assert {entry["route"] for entry in requests} >= {
        "/api/admin/products",
        "/api/check-budget",
        "/",
    }
    last = requests[-1]
    assert last["request_id"] == "trace-42"
    assert set(last) >= {"time", "level", "pid", "method", "route", "status", "duration_ms"}
    assert last["status"] == 200 and last["method"] == "GET"
    assert [entry["status"] for entry in requests[3:5]] == [401, 401]
    text = "\n".join(lines)
    for secret in (API_KEY, ADMIN_KEY, PASSWORD, "wrong-key-"):
        assert secret not in text


def test_rate_limit_per_key_answers_429_with_retry_after(make_env):
    client = make_env(rate_limit="2/minute").client
    assert put_product(client).status == 201  # admin calls are not limited
    assert provision(client, "alice").status == 201
    for _ in range(2):
        assert check(client, "alice").status == 200
    refused = check(client, "alice")
    assert_rejected(refused, 429, "rate_limited")
    assert refused.body["scope"] == "key"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert_rejected(call(client, "GET", "/api/users/alice/budget", headers=API), 429)
    assert call(client, "GET", "/api/admin/products", headers=ADMIN).status == 200
    assert call(client, "GET", "/").status == 200
    assert value(scrape(client), "billing_rate_limit_rejections_total", scope="key") == 2


def test_rate_limit_per_user_counts_check_and_log_per_user(make_env):
    client = make_env(rate_limit_per_user="2/minute").client
    put_product(client)
    provision(client, "alice")
    provision(client, "bob")
    assert check(client, "alice", request_id="a-1").status == 200
    assert log_usage(client, "alice", "a-1").status == 201
    before = call(client, "GET", "/api/users/alice/budget", headers=API).body
    refused = log_usage(client, "alice", "a-2")
    assert_rejected(refused, 429, "rate_limited")
    assert refused.body["scope"] == "user"
    assert call(client, "GET", "/api/users/alice/budget", headers=API).body == before
    assert check(client, "bob").status == 200
    assert value(scrape(client), "billing_rate_limit_rejections_total", scope="user") == 1


def test_health_reports_redis_only_when_configured(make_env, redis_url, redis_prefix):
    client = make_env(redis_url=redis_url, rate_limit_key_prefix=redis_prefix).client
    reply = call(client, "GET", "/")
    assert reply.status == 200
    assert reply.body["redis"] == "ok" and reply.body["database"] == "ok"


@pytest.mark.parametrize(("policy", "status"), [("open", 200), ("closed", 503)])
def test_health_with_redis_down_follows_the_failure_policy(
    make_env, dead_redis_url, policy, status
):
    client = make_env(redis_url=dead_redis_url, rate_limit_redis_failure=policy).client
    reply = call(client, "GET", "/")
    assert reply.status == status
    assert reply.body["redis"] == "error" and reply.body["database"] == "ok"
    if status == 503:
        assert_rejected(reply, 503, "unavailable")


def test_redis_down_fails_open_and_is_counted(make_env, dead_redis_url):
    client = make_env(rate_limit_per_user="1/minute", redis_url=dead_redis_url).client
    put_product(client)
    provision(client, "alice")
    for _ in range(3):
        assert check(client, "alice").status == 200
    assert value(scrape(client), "billing_rate_limit_redis_failures_total") == 3


def test_redis_down_fails_closed_with_503_when_configured(make_env, dead_redis_url):
    client = make_env(
        rate_limit_per_user="1/minute", redis_url=dead_redis_url, rate_limit_redis_failure="closed"
    ).client
    put_product(client)
    provision(client, "alice")
    assert_rejected(check(client, "alice"), 503, "unavailable")


class Broken:
    def on_get(self, req, resp) -> None:
        raise RuntimeError("a bug")


def test_an_unexpected_error_is_a_json_500_and_one_json_log_record(env, caplog):
    env.app.add_route("/broken", Broken(), access=Access.PUBLIC)
    with caplog.at_level(logging.INFO):
        result = env.client.simulate_get("/broken", headers={"X-Request-ID": "trace-bug"})
    assert result.status_code == 500
    assert result.json == {"error": "internal_error", "message": "internal error"}
    assert result.headers["x-request-id"] == "trace-bug"
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1
    entry = json.loads(JsonFormatter().format(errors[0]))
    assert entry["request_id"] == "trace-bug"
    assert "RuntimeError: a bug" in entry["exception"]


def test_a_bug_hit_again_and_again_logs_one_record_until_its_interval_passes(env, caplog):
    """A client that can reach a bug must not be able to write a traceback per request."""
    env.app.add_route("/broken", Broken(), access=Access.PUBLIC)
    with caplog.at_level(logging.INFO):
        for _ in range(50):
            assert env.client.simulate_get("/broken").status_code == 500
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "RuntimeError at " in errors[0].getMessage()
