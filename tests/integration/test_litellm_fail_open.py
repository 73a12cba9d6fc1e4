"""The callback configured to fail open, without auto-provisioning, in a real LiteLLM proxy.

Unknown users are refused with 403; while billing is down calls go through without a hold and
their usage waits in the spool until billing is back, counted once.
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
    eventually,
    holds,
    proxy_client,
    response_cost_nanos,
    settled,
    spooled,
    start_proxy,
)

from client import BillingClient

OPEN_REQUESTS = 3


@pytest.fixture(scope="module")
def admin(billing: Billing) -> Iterator[BillingClient]:
    with BillingClient(billing.base_url, API_KEY, ADMIN_KEY) as client:
        client.put_product("fo-plan", "Fail-open plan", Decimal("10"))
        yield client


@pytest.fixture(scope="module")
def spool_path(workdir: Path) -> Path:
    return workdir / "billing-spool.sqlite3"


@pytest.fixture(scope="module")
def ai(billing: Billing, workdir: Path, spool_path: Path) -> Iterator[openai.OpenAI]:
    env = billing_env(billing, spool_path, BILLING_FAILURE_MODE="fail_open")
    with start_proxy(workdir, env) as proxy, proxy_client(proxy) as client:
        yield client


def test_unknown_user_is_forbidden(ai: openai.OpenAI, admin: BillingClient) -> None:
    with pytest.raises(openai.PermissionDeniedError) as refused:
        chat(ai, "fo-stranger")
    assert refused.value.status_code == 403
    assert "unknown billing user" in str(refused.value)


def test_calls_pass_while_billing_is_down_and_are_billed_when_it_returns(
    ai: openai.OpenAI, admin: BillingClient, billing: Billing, spool_path: Path
) -> None:
    admin.provision_user("fo-user@example.test", PASSWORD, "fo-plan", user_id="fo-user")
    billing.stop()
    answers = [chat(ai, "fo-user") for _ in range(OPEN_REQUESTS)]
    eventually(lambda: spooled(spool_path) == OPEN_REQUESTS, "usage spooled")

    billing.start()
    budget = settled(admin, "fo-user", OPEN_REQUESTS)
    eventually(lambda: spooled(spool_path) == 0, "spool drained")
    assert budget.used == dollars(sum(response_cost_nanos(raw) for raw in answers))
    assert holds(billing.db_path, "fo-user", "settled") == []
