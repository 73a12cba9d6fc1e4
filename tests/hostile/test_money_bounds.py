"""Money cannot overflow: a gateway key logging absurd costs, against a real ``billing serve``
on each store.

Counters are 64-bit nano-dollars (about $9.2 billion); one call could log $1e9, so ten calls
filled a counter and every later log-usage of the tenant failed with a retryable 503, forever,
while checks kept saying yes. The bounds of ``core.money`` now refuse what would pass them with
a final ``422 amount_out_of_range`` that changes nothing, checks say no once the counters are
full, and the typed client and the LiteLLM spool never send such a usage again.
"""

import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from client import AmountOutOfRange, BillingClient, RetryPolicy
from client.spool import SpoolForwarder, UsageRecord, UsageSpool
from core.money import COST_PER_CALL_MAX, COUNTER_MAX, NANOS_PER_UNIT

# BillingServer and its helpers live with the integration tests, whose folder is on the import
# path only when one of its modules is collected.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from integration_support import (  # noqa: E402
    ADMIN_KEY,
    API_KEY,
    BillingServer,
    Database,
    admin_headers,
    api_headers,
    create_product,
    dumps,
    loads,
    provision_user,
    read_only,
    serving,
)

BILLION = 1_000_000_000
COST_PER_CALL_MAX_USD = COST_PER_CALL_MAX // NANOS_PER_UNIT
COUNTER_MAX_USD = COUNTER_MAX // NANOS_PER_UNIT
FILL_THREADS = 8
ONE_ATTEMPT = RetryPolicy(attempts_max=1)


@pytest.fixture(scope="module")
def database(backend: str, request: pytest.FixtureRequest, workdir: Path) -> Database:
    if backend == "sqlite":
        return workdir / "money.db"
    return request.getfixturevalue("postgres").new_schema()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("money_bounds")


@pytest.fixture(scope="module")
def server(database: Database, workdir: Path) -> Iterator[BillingServer]:
    """A server with a plan of $1,000,000,000 (``BUDGET_MAX``), the largest there may be."""
    server = BillingServer(workdir, database, "money")
    with serving(server) as client:
        create_product(client, "whale", BILLION)
        yield server


@pytest.fixture
def api(server: BillingServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def log(api: httpx.Client, user_id: str, request_id: str, cost: object) -> httpx.Response:
    body = {"user_id": user_id, "model": "gpt-4o", "request_id": request_id, "cost_total": cost}
    return api.post("/api/log-usage", content=dumps(body), headers=api_headers())


def check(api: httpx.Client, user_id: str, cost: object) -> dict:
    body = {"user_id": user_id, "model": "gpt-4o", "cost_estimate": cost}
    answer = api.post("/api/check-budget", content=dumps(body), headers=api_headers())
    assert answer.status_code == 200, answer.text
    return loads(answer)


def credit(api: httpx.Client, user_id: str, amount: object, grant_id: str) -> httpx.Response:
    body = {"amount": amount, "reason": "goodwill", "grant_id": grant_id}
    return api.post(
        f"/api/admin/users/{user_id}/credits", content=dumps(body), headers=admin_headers()
    )


def figures(api: httpx.Client, database: Database, user_id: str, tenant_id: str) -> tuple:
    """Everything a refused write must leave as it was: the user's budget view and usage, and
    the tenant's counters and usage rows as the database holds them."""
    budget = api.get(f"/api/users/{user_id}/budget", headers=api_headers())
    usage = api.get(f"/api/users/{user_id}/usage", headers=api_headers())
    assert budget.status_code == 200 and usage.status_code == 200, (budget.text, usage.text)
    with read_only(database) as raw:
        tenant = raw.execute("SELECT used, held FROM tenants WHERE id = ?", (tenant_id,)).fetchone()
        rows = raw.execute(
            "SELECT COUNT(*), COALESCE(SUM(cost), 0) FROM usage WHERE tenant_id = ?", (tenant_id,)
        ).fetchone()
    return loads(budget)["budget"], loads(usage)["total"], tuple(tenant), tuple(rows)


def assert_out_of_range(answer: httpx.Response, field: str, bound: int, name: str) -> None:
    assert answer.status_code == 422, answer.text
    body = loads(answer)
    assert body["error"] == "amount_out_of_range", body
    assert body["field"] == field and body["bound"] == bound, body
    assert name in body["message"], body


def test_ten_calls_of_a_billion_dollars_then_another_user_of_the_tenant_logs_a_dollar(
    api: httpx.Client, database: Database
) -> None:
    provision_user(api, "ten-a", "whale", "ten")
    provision_user(api, "ten-b", "whale", "ten")
    before = figures(api, database, "ten-a", "ten")
    for call in range(10):
        answer = log(api, "ten-a", f"ten-{call}", BILLION)
        assert_out_of_range(answer, "cost_total", COST_PER_CALL_MAX_USD, "COST_PER_CALL_MAX")
    assert figures(api, database, "ten-a", "ten") == before
    assert check(api, "ten-a", 1)["allowed"] is True
    answer = log(api, "ten-b", "ten-b-1", 1)
    assert answer.status_code == 201, answer.text
    assert loads(answer)["budget"]["used"] == 1


def fill(api: httpx.Client, user_id: str) -> None:
    """Log $1,000,000 (``COST_PER_CALL_MAX``) a thousand times: ``COUNTER_MAX`` exactly."""
    calls = COUNTER_MAX // COST_PER_CALL_MAX

    def one(call: int) -> int:
        return log(api, user_id, f"{user_id}-{call}", COST_PER_CALL_MAX_USD).status_code

    with ThreadPoolExecutor(FILL_THREADS) as pool:
        statuses = list(pool.map(one, range(calls)))
    assert statuses == [201] * calls


def test_a_full_counter_refuses_the_next_usage_finally_and_checks_say_no(
    api: httpx.Client, database: Database, server: BillingServer, tmp_path: Path
) -> None:
    provision_user(api, "fill-a", "whale", "fill")
    provision_user(api, "fill-b", "whale", "fill")
    provision_user(api, "outsider", "whale", "elsewhere")
    fill(api, "fill-a")
    full = figures(api, database, "fill-a", "fill")
    assert full[0]["used"] == COUNTER_MAX_USD
    assert full[2] == (COUNTER_MAX, 0)

    nano = Decimal("0.000000001")
    assert_out_of_range(log(api, "fill-a", "fill-a-past", nano), "cost_total", BILLION, "user's")
    assert_out_of_range(log(api, "fill-b", "fill-b-1", 1), "cost_total", BILLION, "tenant's")
    replay = log(api, "fill-a", "fill-a-0", COST_PER_CALL_MAX_USD)
    assert replay.status_code == 200 and loads(replay)["result"] == "exists", replay.text
    assert figures(api, database, "fill-a", "fill") == full

    # The tenant has no cap, but its counter is full: checks say no rather than let through a
    # call that could not be billed.
    denied = check(api, "fill-b", nano)
    assert (denied["allowed"], denied["status"]) == (False, "tenant_exceeded")
    assert check(api, "outsider", 1)["allowed"] is True
    assert log(api, "outsider", "outsider-1", 1).status_code == 201

    # The typed client raises at once (one attempt; a retry could not help), and the spool
    # marks the record rejected instead of sending it again every round.
    with BillingClient(server.base_url, API_KEY, ADMIN_KEY) as billing:
        with pytest.raises(AmountOutOfRange) as refused:
            billing.log_usage("fill-b", "gpt-4o", "fill-b-client", cost_total="1")
        assert (refused.value.status, refused.value.code) == (422, "amount_out_of_range")
        assert refused.value.body["bound"] == BILLION
        spool = UsageSpool(tmp_path / "spool.sqlite3", records_max=10)
        spool.put(UsageRecord("fill-b", "gpt-4o", "fill-b-spooled", 1, 1, "1", 5))
        forwarder = SpoolForwarder(spool, billing, retry_seconds=1, batch_max=10)
        assert forwarder.forward_once() == 0
        assert forwarder.forward_once() == 0
        assert spool.pending(10) == [] and spool.count() == 1
    assert figures(api, database, "fill-a", "fill") == full


def test_credits_fill_to_the_bound_and_the_next_grant_is_refused(
    api: httpx.Client, database: Database
) -> None:
    provision_user(api, "credited", "whale", "credits")
    assert credit(api, "credited", BILLION, "g-1").status_code == 201
    before = figures(api, database, "credited", "credits")
    assert before[0]["total"] == 2 * BILLION
    answer = credit(api, "credited", Decimal("0.000000001"), "g-2")
    assert_out_of_range(answer, "amount", BILLION, "COUNTER_MAX")
    assert figures(api, database, "credited", "credits") == before
    answer = credit(api, "credited", Decimal("1000000000.000000001"), "g-3")
    assert_out_of_range(answer, "amount", BILLION, "BUDGET_MAX")
    assert figures(api, database, "credited", "credits") == before
