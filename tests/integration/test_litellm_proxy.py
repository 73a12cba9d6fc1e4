"""A real LiteLLM proxy with `client.litellm` loaded (default settings: fail_closed), in front
of a real `billing serve`.

Models answer with LiteLLM's ``mock_response`` (no provider is called); requests go through the
`openai` client. One proxy and one billing service for the whole module (the proxy starts slowly);
the billing service is stopped and restarted on its port in the outage test.
"""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import openai
import pytest
from integration_support import ADMIN_KEY, API_KEY, PASSWORD, read_only
from litellm_support import (
    Billing,
    LiteLLMProxy,
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

CONCURRENT_REQUESTS = 50
ROOM_FOR_REQUESTS = 10
OUTAGE_REQUESTS = 5
SPEND_REQUESTS_MAX = 20


@pytest.fixture(scope="module")
def admin(billing: Billing) -> Iterator[BillingClient]:
    with BillingClient(billing.base_url, API_KEY, ADMIN_KEY) as client:
        client.put_product("lt-plan", "LiteLLM plan", Decimal("10"))
        client.put_product("lt-auto", "Auto plan", Decimal("5"))
        yield client


@pytest.fixture(scope="module")
def spool_path(workdir: Path) -> Path:
    return workdir / "billing-spool.sqlite3"


@pytest.fixture(scope="module")
def proxy(billing: Billing, workdir: Path, spool_path: Path) -> Iterator[LiteLLMProxy]:
    """A hold per call (no leases), so each test can find every call's own hold: with leases,
    whether a user's concurrent calls share a slice depends on when the first hold's answer
    came back, which made the outage test's count of holds pass or fail by timing. Leases are
    tested in test_litellm_gateway."""
    env = billing_env(
        billing,
        spool_path,
        BILLING_ADMIN_KEY=ADMIN_KEY,
        BILLING_DEFAULT_PRODUCT="lt-auto",
        BILLING_LEASE_CALLS="0",
    )
    with start_proxy(workdir, env) as started:
        yield started


@pytest.fixture(scope="module")
def ai(proxy: LiteLLMProxy) -> Iterator[openai.OpenAI]:
    with proxy_client(proxy) as client:
        yield client


def provision(admin: BillingClient, user_id: str, product_id: str = "lt-plan") -> None:
    admin.provision_user(f"{user_id}@example.test", PASSWORD, product_id, "lt-tenant", user_id)


def test_requests_pass_while_budget_has_room_then_429(
    ai: openai.OpenAI, admin: BillingClient
) -> None:
    admin.put_product("lt-tiny", "Tiny", Decimal("0.001"))
    provision(admin, "lt-spend", "lt-tiny")
    costs: list[int] = []
    denial: openai.RateLimitError | None = None
    for _ in range(SPEND_REQUESTS_MAX):
        try:
            raw = chat(ai, "lt-spend")
        except openai.RateLimitError as refused:
            denial = refused
            break
        costs.append(response_cost_nanos(raw))
        settled(admin, "lt-spend", len(costs))
    assert denial is not None, "the budget was never spent"
    assert len(costs) >= 2
    assert denial.status_code == 429
    exceeded = admin.check_budget("lt-spend", cost_estimate=Decimal("0.001"))
    assert not exceeded.allowed
    assert exceeded.message in str(denial)

    budget = admin.user_budget("lt-spend").budget
    assert budget.used == dollars(sum(costs))
    assert budget.reserved == 0
    assert budget.remaining < 0 or budget.remaining < Decimal("0.000225")


def test_streamed_response_is_logged(ai: openai.OpenAI, admin: BillingClient) -> None:
    provision(admin, "lt-stream")
    stream = ai.chat.completions.create(
        model="gpt-4o",
        user="lt-stream",
        max_tokens=5,
        stream=True,
        messages=[{"role": "user", "content": "hi"}],
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text
    budget = settled(admin, "lt-stream", 1)
    assert budget.used > 0
    total = admin.user_usage("lt-stream").total
    assert total.tokens_input > 0
    assert total.tokens_output > 0
    assert total.cost == budget.used


def test_failing_call_leaves_no_hold(
    ai: openai.OpenAI, admin: BillingClient, billing: Billing
) -> None:
    provision(admin, "lt-broken")
    with pytest.raises(openai.InternalServerError):
        chat(ai, "lt-broken", model="gpt-4o-broken")
    eventually(lambda: len(holds(billing.db_path, "lt-broken", "released")) == 1, "released hold")
    assert holds(billing.db_path, "lt-broken", "open") == []
    budget = admin.user_budget("lt-broken").budget
    assert budget.reserved == 0
    assert budget.used == 0


def test_unknown_user_is_provisioned_onto_the_default_product(
    ai: openai.OpenAI, admin: BillingClient
) -> None:
    chat(ai, "lt-newcomer")
    assert admin.get_user("lt-newcomer").product_id == "lt-auto"
    assert settled(admin, "lt-newcomer", 1).used > 0


def test_request_without_user_is_forbidden(ai: openai.OpenAI) -> None:
    with pytest.raises(openai.PermissionDeniedError) as refused:
        ai.chat.completions.create(
            model="gpt-4o", max_tokens=1, messages=[{"role": "user", "content": "hi"}]
        )
    assert refused.value.status_code == 403
    assert "user" in str(refused.value)


def image_message(detail: str) -> list[dict]:
    image = {"url": "https://images.invalid/cat.png", "detail": detail}
    content = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": image}]
    return [{"role": "user", "content": content}]


def test_an_image_is_estimated_at_litellms_default_size_never_fetched(
    ai: openai.OpenAI, admin: BillingClient
) -> None:
    """Asked for a high-detail image's tokens, LiteLLM's token counter downloads the image, in
    the proxy's event loop; from this machine the download fails, which failed the call."""
    provision(admin, "lt-image")
    raw = ai.chat.completions.with_raw_response.create(
        model="gpt-4o", user="lt-image", max_tokens=1, messages=image_message("high")
    )
    assert settled(admin, "lt-image", 1).used == dollars(response_cost_nanos(raw))


def test_a_prompt_litellm_cannot_count_is_refused_with_400_and_holds_nothing(
    ai: openai.OpenAI, admin: BillingClient, billing: Billing
) -> None:
    provision(admin, "lt-uncountable")
    with pytest.raises(openai.BadRequestError) as refused:
        ai.chat.completions.create(
            model="gpt-4o", user="lt-uncountable", max_tokens=1, messages=image_message("huge")
        )
    assert refused.value.status_code == 400
    assert "cannot count this request's prompt tokens" in str(refused.value)
    assert holds(billing.db_path, "lt-uncountable", "open") == []
    assert admin.user_budget("lt-uncountable").budget.used == 0


def test_concurrent_requests_never_overspend(
    ai: openai.OpenAI, admin: BillingClient, billing: Billing
) -> None:
    provision(admin, "lt-probe")
    probe = chat(ai, "lt-probe", model="gpt-4o-slow")
    with read_only(billing.db_path) as db:
        estimate_nanos = db.execute(
            "SELECT amount FROM reservations WHERE request_id = ?",
            (probe.headers["x-litellm-call-id"],),
        ).fetchone()[0]
    assert 0 < estimate_nanos < response_cost_nanos(probe), "settling must never free room"
    admin.put_product("lt-ten", "Room for ten", dollars(ROOM_FOR_REQUESTS * estimate_nanos))
    provision(admin, "lt-crowd", "lt-ten")

    def attempt(_: int):
        try:
            return chat(ai, "lt-crowd", model="gpt-4o-slow")
        except openai.RateLimitError:
            return None

    with ThreadPoolExecutor(max_workers=CONCURRENT_REQUESTS) as pool:
        answers = list(pool.map(attempt, range(CONCURRENT_REQUESTS)))
    admitted = [raw for raw in answers if raw is not None]
    assert 1 <= len(admitted) <= ROOM_FOR_REQUESTS
    budget = settled(admin, "lt-crowd", len(admitted))
    assert budget.used == dollars(sum(response_cost_nanos(raw) for raw in admitted))


def test_billing_outage_spools_usage_and_delivers_it_once(
    ai: openai.OpenAI,
    admin: BillingClient,
    billing: Billing,
    proxy: LiteLLMProxy,
    spool_path: Path,
) -> None:
    """Usage of calls in flight when billing stops is spooled, survives a proxy restart, and
    is delivered once billing is back; calls arriving meanwhile are refused (fail_closed)."""
    provision(admin, "lt-outage")
    with ThreadPoolExecutor(max_workers=OUTAGE_REQUESTS) as pool:
        calls = [
            pool.submit(chat, ai, "lt-outage", "gpt-4o-slower") for _ in range(OUTAGE_REQUESTS)
        ]
        eventually(
            lambda: (
                len(holds(billing.db_path, "lt-outage", "open"))
                + len(holds(billing.db_path, "lt-outage", "settled"))
                == OUTAGE_REQUESTS
            ),
            "every hold placed",
        )
        billing.stop()
        in_flight = len(holds(billing.db_path, "lt-outage", "open"))
        assert in_flight >= 1, "every call ended before billing stopped: OUTAGE_DELAY_SECONDS"
        with pytest.raises(openai.APIStatusError) as refused:
            chat(ai, "lt-outage")
        assert refused.value.status_code == 503
        answers = [call.result() for call in calls]
    eventually(lambda: spooled(spool_path) == in_flight, "usage of calls in flight spooled")

    proxy.restart()
    billing.start()
    budget = settled(admin, "lt-outage", OUTAGE_REQUESTS)
    eventually(lambda: spooled(spool_path) == 0, "spool drained")
    assert budget.used == dollars(sum(response_cost_nanos(raw) for raw in answers))
    with read_only(billing.db_path) as db:
        rows = db.execute("SELECT count(*) FROM usage WHERE user_id = 'lt-outage'").fetchone()[0]
    assert rows == OUTAGE_REQUESTS
    assert holds(billing.db_path, "lt-outage", "settled") != []
    assert holds(billing.db_path, "lt-outage", "open") == []


def test_billing_outage_spools_the_release_of_a_failed_call(
    ai: openai.OpenAI, admin: BillingClient, billing: Billing, spool_path: Path
) -> None:
    """A call that fails while billing is down has its hold released once billing is back,
    instead of the hold counting until it expires."""
    provision(admin, "lt-unlucky")
    with ThreadPoolExecutor(max_workers=1) as pool:
        call = pool.submit(chat, ai, "lt-unlucky", "gpt-4o-slower-broken")
        eventually(lambda: len(holds(billing.db_path, "lt-unlucky", "open")) == 1, "hold placed")
        billing.stop()
        assert not call.done(), "the call ended before billing stopped: OUTAGE_DELAY_SECONDS"
        with pytest.raises(openai.InternalServerError):
            call.result()
    eventually(lambda: spooled(spool_path) == 1, "release spooled")
    assert holds(billing.db_path, "lt-unlucky", "open") != []

    billing.start()
    eventually(lambda: spooled(spool_path) == 0, "spool drained")
    assert holds(billing.db_path, "lt-unlucky", "open") == []
    assert len(holds(billing.db_path, "lt-unlucky", "released")) == 1
    assert admin.user_budget("lt-unlucky").budget.reserved == 0
