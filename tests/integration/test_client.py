"""The typed client (sync and async) against a real `billing serve`: results, errors, retries."""

import asyncio
import http.server
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import pytest
from integration_support import ADMIN_KEY, API_KEY, PASSWORD, BillingServer

from client import (
    AmountOutOfRange,
    AsyncBillingClient,
    BillingClient,
    BillingError,
    BudgetExceeded,
    Conflict,
    NotFound,
    Rejected,
    RetryPolicy,
    Unauthorized,
    Unavailable,
)
from client.spool import SpoolForwarder, UsageRecord, UsageSpool

QUICK_RETRY = RetryPolicy(attempts_max=2, backoff_seconds_initial=0.01, backoff_seconds_max=0.02)


@pytest.fixture(scope="module")
def server(launch, workdir: Path) -> BillingServer:
    return launch(workdir / "client.db", "client")


@pytest.fixture(scope="module")
def billing(server: BillingServer):
    with BillingClient(server.base_url, API_KEY, ADMIN_KEY) as opened:
        opened.put_product("client-plan", "Client plan", Decimal("1"))
        yield opened


def provision(billing: BillingClient, user_id: str) -> None:
    answer = billing.provision_user(
        f"{user_id}@example.test", PASSWORD, "client-plan", "t-client", user_id
    )
    assert answer.user.id == user_id


def test_gateway_calls_return_exact_decimals(billing: BillingClient) -> None:
    provision(billing, "c-gateway")
    check = billing.check_budget("c-gateway", cost_estimate=Decimal("0.1"), request_id="c-g-1")
    assert check.allowed
    assert check.reservation is not None
    assert check.reservation.amount == Decimal("0.1")
    assert isinstance(check.budget.remaining, Decimal)

    logged = billing.log_usage("c-gateway", "gpt-4o", "c-g-1", 10, 20, "0.00022500000000000002", 12)
    assert logged.result == "created"
    assert logged.budget.used == Decimal("0.000225")
    again = billing.log_usage("c-gateway", "gpt-4o", "c-g-1", 10, 20, "0.00022500000000000002", 99)
    assert again.result == "exists"

    for index in range(3):
        billing.log_usage("c-gateway", "gpt-4o", f"c-g-tenth-{index}", cost_total=Decimal("0.1"))
    budget = billing.user_budget("c-gateway").budget
    assert budget.used == Decimal("0.300225")
    assert budget.reserved == 0
    usage = billing.user_usage("c-gateway")
    assert usage.total.requests == 4
    assert usage.total.cost == Decimal("0.300225")


def test_release_and_its_errors(billing: BillingClient) -> None:
    provision(billing, "c-release")
    billing.reserve("c-release", "c-r-1", Decimal("0.25"))
    assert billing.release_reservation("c-r-1").released == Decimal("0.25")
    assert billing.release_reservation("c-r-1").released == Decimal("0.25")
    with pytest.raises(NotFound) as missing:
        billing.release_reservation("c-r-never")
    assert missing.value.status == 404
    assert missing.value.code == "not_found"
    with pytest.raises(Conflict) as closed:
        billing.reserve("c-release", "c-r-1", Decimal("0.25"))
    assert closed.value.code == "reservation_closed"


def test_denial_is_an_answer_or_budget_exceeded(billing: BillingClient) -> None:
    provision(billing, "c-deny")
    check = billing.check_budget("c-deny", cost_estimate=Decimal("2"))
    assert not check.allowed
    assert check.status == "exceeded"
    with pytest.raises(BudgetExceeded) as denied:
        billing.reserve("c-deny", "c-d-1", Decimal("2"))
    assert denied.value.check.budget.remaining == Decimal("1")
    assert denied.value.message == check.message
    with pytest.raises(NotFound):
        billing.check_budget("c-nobody", cost_estimate=Decimal("0.1"))


def test_admin_calls(billing: BillingClient) -> None:
    assert "client-plan" in {product.id for product in billing.list_products()}
    tenant = billing.put_tenant("t-capped", "Capped", Decimal("0.5"))
    assert tenant.monthly_budget == Decimal("0.5")
    provision(billing, "c-admin")
    with pytest.raises(Conflict) as taken:
        provision(billing, "c-admin")
    assert taken.value.code == "conflict"
    credit = billing.add_credits("c-admin", Decimal("0.75"), "goodwill", grant_id="g-1")
    assert credit.user.budget.total == Decimal("1.75")
    assert (
        billing.add_credits("c-admin", Decimal("0.75"), "goodwill", grant_id="g-1").result
        == "exists"
    )
    suspended = billing.update_user("c-admin", status="suspended")
    assert suspended.status == "suspended"
    assert billing.get_user("c-admin").status == "suspended"
    with pytest.raises(Conflict) as refused:
        billing.reset_budgets("2001-01")
    assert (refused.value.status, refused.value.code) == (409, "reset_refused")
    assert billing.reset_budgets("2001-01", force=True).users_reset >= 1
    assert billing.reset_budgets("2001-01").already_done


def test_bad_input_and_wrong_key_are_rejected(
    server: BillingServer, billing: BillingClient
) -> None:
    with pytest.raises(Rejected) as invalid:
        billing.put_product("", "Empty", Decimal("1"))
    assert invalid.value.status == 422
    with pytest.raises(TypeError):
        billing.log_usage("c-gateway", "gpt-4o", "c-float", cost_total=0.1)  # type: ignore[arg-type]
    with BillingClient(server.base_url, "wrong-key-0123456789") as wrong:
        with pytest.raises(Unauthorized) as refused:
            wrong.user_budget("c-gateway")
        assert refused.value.code == "unauthorized"
        with pytest.raises(BillingError):
            wrong.list_products()


def test_unreachable_service_is_unavailable_after_bounded_retries() -> None:
    with socket.socket() as closed_port:
        closed_port.bind(("127.0.0.1", 0))
        port = closed_port.getsockname()[1]
    with BillingClient(f"http://127.0.0.1:{port}", API_KEY, retry=QUICK_RETRY) as nowhere:
        with pytest.raises(Unavailable) as down:
            nowhere.check_budget("anyone", cost_estimate=Decimal("0.1"))
    assert API_KEY not in str(down.value)


def test_async_client_does_the_same(server: BillingServer, billing: BillingClient) -> None:
    provision(billing, "c-async")

    async def scenario() -> None:
        async with AsyncBillingClient(server.base_url, API_KEY, ADMIN_KEY) as client:
            holds = await asyncio.gather(
                *(
                    client.check_budget(
                        "c-async", cost_estimate=Decimal("0.3"), request_id=f"c-a-{n}"
                    )
                    for n in range(5)
                )
            )
            admitted = [hold.reservation.request_id for hold in holds if hold.reservation]
            assert len(admitted) == 3
            logged = await client.log_usage(
                "c-async", "gpt-4o", admitted[0], cost_total=Decimal("0.1")
            )
            assert logged.result == "created"
            with pytest.raises(BudgetExceeded):
                await client.reserve("c-async", "c-a-big", Decimal("5"))
            assert (await client.get_user("c-async")).id == "c-async"

    asyncio.run(scenario())
    budget = billing.user_budget("c-async").budget
    assert budget.used == Decimal("0.1")
    assert budget.reserved == Decimal("0.6")


def test_client_package_does_not_import_litellm() -> None:
    """The plain client must work where LiteLLM is not installed."""
    probe = "import sys, client; assert not any(name.startswith('litellm') for name in sys.modules)"
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)


class _Canned(http.server.BaseHTTPRequestHandler):
    """Answers every POST with the server's ``answer`` (status, JSON body) and counts them."""

    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests += 1
        status, body = self.server.answer
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_: object) -> None:
        pass


@contextmanager
def canned(status: int, body: dict) -> Iterator[http.server.HTTPServer]:
    """A server on loopback that gives one answer to every request, counting them."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Canned)
    server.answer = (status, body)
    server.requests = 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


OUT_OF_RANGE = {
    "error": "amount_out_of_range",
    "message": "cost_total: it would take the tenant's used past COUNTER_MAX (1000000000)",
    "field": "cost_total",
    "bound": 1000000000,
}


def test_amount_out_of_range_is_final_and_a_5xx_is_retried() -> None:
    """One request for the 422, whatever the retry policy; every attempt for a 503."""
    retry = RetryPolicy(attempts_max=3, backoff_seconds_initial=0.01, backoff_seconds_max=0.02)
    with canned(422, OUT_OF_RANGE) as server:
        url = f"http://127.0.0.1:{server.server_port}"
        with BillingClient(url, API_KEY, retry=retry) as billing:
            with pytest.raises(AmountOutOfRange) as refused:
                billing.log_usage("u", "gpt-4o", "r-1", cost_total="1")

            async def scenario() -> None:
                async with AsyncBillingClient(url, API_KEY, retry=retry) as client:
                    with pytest.raises(AmountOutOfRange):
                        await client.reserve("u", "r-2", "1")

            asyncio.run(scenario())
        assert server.requests == 2
    assert isinstance(refused.value, Rejected)
    assert refused.value.body["field"] == "cost_total"
    with canned(503, {"error": "unavailable", "message": "busy"}) as server:
        url = f"http://127.0.0.1:{server.server_port}"
        with BillingClient(url, API_KEY, retry=retry) as billing:
            with pytest.raises(Unavailable):
                billing.log_usage("u", "gpt-4o", "r-3", cost_total="1")
        assert server.requests == 3


def test_the_spool_sends_a_usage_refused_as_out_of_range_once(tmp_path: Path) -> None:
    spool = UsageSpool(tmp_path / "spool.sqlite3", records_max=10)
    spool.put(UsageRecord("u", "gpt-4o", "r-spooled", 1, 1, "1", 5))
    with canned(422, OUT_OF_RANGE) as server:
        url = f"http://127.0.0.1:{server.server_port}"
        with BillingClient(url, API_KEY) as billing:
            forwarder = SpoolForwarder(spool, billing, retry_seconds=1, batch_max=10)
            assert forwarder.forward_once() == 0
            assert forwarder.forward_once() == 0
        assert server.requests == 1
    assert spool.pending(10) == [] and spool.count() == 1
