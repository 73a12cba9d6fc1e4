"""A denied call that its own worker's queued usage would admit, in a real LiteLLM proxy (one
worker) in front of a real `billing serve`: the denial flushes that usage at once.

The proxy flushes usage every ``FLUSH_INTERVAL_MS``, further apart than a denied call waits for
usage to settle (``BILLING_SETTLE_WAIT_MS``, 1 s by default), so a budget is filled one call
after another only because each denial starts the flush it waits for.
"""

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import openai
import pytest
from integration_support import ADMIN_KEY, API_KEY, PASSWORD
from litellm_support import (
    Billing,
    billing_env,
    chat,
    dollars,
    proxy_client,
    response_cost_nanos,
    settled,
    start_proxy,
)

from client import BillingClient

FLUSH_INTERVAL_MS = 5_000
BUDGET_CALLS = 10
CALLS = 14


@pytest.fixture(scope="module")
def billing(workdir: Path) -> Iterator[Billing]:
    with Billing.running(workdir) as service:
        yield service


@pytest.fixture(scope="module")
def admin(billing: Billing) -> Iterator[BillingClient]:
    with BillingClient(billing.base_url, API_KEY, ADMIN_KEY) as client:
        client.put_product("st-plan", "Settlement plan", Decimal("10"))
        yield client


@pytest.fixture(scope="module")
def ai(billing: Billing, workdir: Path) -> Iterator[openai.OpenAI]:
    env = billing_env(
        billing, workdir / "spool.sqlite3", BILLING_FLUSH_INTERVAL_MS=str(FLUSH_INTERVAL_MS)
    )
    with start_proxy(workdir, env) as proxy, proxy_client(proxy) as client:
        yield client


def provision(admin: BillingClient, user_id: str, product_id: str) -> None:
    admin.provision_user(f"{user_id}@example.test", PASSWORD, product_id, "st-tenant", user_id)


def test_calls_one_after_another_fill_a_budget_though_flushes_are_seconds_apart(
    ai: openai.OpenAI, admin: BillingClient
) -> None:
    """Without ``max_tokens`` each call holds what remains (``client.holds``), so every call
    after the first is denied until the usage of the one before is in."""
    provision(admin, "st-probe", "st-plan")
    cost = response_cost_nanos(chat(ai, "st-probe", max_tokens=None))
    settled(admin, "st-probe", 1)
    budget = dollars(BUDGET_CALLS * cost)
    admin.put_product("st-small", "Room for ten", budget)
    provision(admin, "st-user", "st-small")
    admitted = []
    for _ in range(CALLS):
        try:
            admitted.append(chat(ai, "st-user", max_tokens=None))
        except openai.RateLimitError:
            continue
    assert len(admitted) >= BUDGET_CALLS - 1
    final = settled(admin, "st-user", len(admitted))
    assert final.used == dollars(sum(response_cost_nanos(raw) for raw in admitted))
    assert abs(final.used - budget) <= dollars(cost)
