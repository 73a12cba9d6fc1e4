"""A real LiteLLM proxy with `client.litellm` loaded, in front of a real `billing serve`.

Models answer with LiteLLM's ``mock_response`` (no provider is called); requests go through the
`openai` client. One proxy and one billing service for the whole module (the proxy starts slowly);
the billing service is stopped and restarted on its port in the outage test.
"""

import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import openai
import pytest
from integration_support import (
    ADMIN_KEY,
    API_KEY,
    PASSWORD,
    BillingServer,
    free_port,
    read_only,
)
from litellm_support import MASTER_KEY, LiteLLMProxy, require_litellm

from client import BillingClient
from core.money import NANOS_PER_UNIT, money_from_input

SLOW_DELAY_SECONDS = 3
OUTAGE_DELAY_SECONDS = 8
SETTLE_WAIT_SECONDS = 60.0
CONCURRENT_REQUESTS = 50
ROOM_FOR_REQUESTS = 10
OUTAGE_REQUESTS = 5
SPEND_REQUESTS_MAX = 20

CONFIG = f"""
model_list:
  - model_name: gpt-4o
    litellm_params: {{model: openai/gpt-4o, api_key: sk-unused, mock_response: "Hello"}}
  - model_name: gpt-4o-slow
    litellm_params:
      model: openai/gpt-4o
      api_key: sk-unused
      mock_response: "Hello, slowly"
      mock_delay: {SLOW_DELAY_SECONDS}
  - model_name: gpt-4o-slower
    litellm_params:
      model: openai/gpt-4o
      api_key: sk-unused
      mock_response: "Hello, very slowly"
      mock_delay: {OUTAGE_DELAY_SECONDS}
  - model_name: gpt-4o-broken
    litellm_params:
      model: openai/gpt-4o
      api_key: sk-unused
      mock_response: "litellm.InternalServerError"
litellm_settings:
  callbacks: client.litellm.billing_callback
  num_retries: 0
router_settings:
  num_retries: 0
"""


class Billing:
    """`billing serve` on one fixed port and database file, so it can stop and come back."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.db_path = workdir / "litellm-billing.db"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.runs = 0
        self.server: BillingServer | None = None

    def start(self) -> None:
        self.runs += 1
        self.server = BillingServer(
            self.workdir, self.db_path, f"billing-{self.runs}", port=self.port
        )
        self.server.wait_ready()

    def stop(self) -> None:
        assert self.server is not None
        self.server.stop()


@pytest.fixture(scope="module")
def billing(workdir: Path) -> Iterator[Billing]:
    require_litellm()
    service = Billing(workdir)
    service.start()
    try:
        yield service
    finally:
        service.stop()


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
def proxy(billing: Billing, admin: BillingClient, workdir: Path, spool_path: Path):
    config_path = workdir / "config.yaml"
    config_path.write_text(CONFIG)
    billing_env = {
        "BILLING_API_URL": billing.base_url,
        "BILLING_API_KEY": API_KEY,
        "BILLING_ADMIN_KEY": ADMIN_KEY,
        "BILLING_DEFAULT_PRODUCT": "lt-auto",
        "BILLING_SPOOL_PATH": str(spool_path),
        "BILLING_SPOOL_RETRY_SECONDS": "0.5",
        "BILLING_ATTEMPTS_MAX": "2",
    }
    started = LiteLLMProxy(workdir, config_path, billing_env)
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def ai(proxy: LiteLLMProxy) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{proxy.base_url}/v1", api_key=MASTER_KEY, max_retries=0, timeout=120
    ) as client:
        yield client


def provision(admin: BillingClient, user_id: str, product_id: str = "lt-plan") -> None:
    admin.provision_user(f"{user_id}@example.test", PASSWORD, product_id, "lt-tenant", user_id)


def chat(ai: openai.OpenAI, user: str, model: str = "gpt-4o", max_tokens: int = 1):
    """One chat call; the raw response keeps LiteLLM's headers (call id, response cost)."""
    return ai.chat.completions.with_raw_response.create(
        model=model, user=user, max_tokens=max_tokens, messages=[{"role": "user", "content": "hi"}]
    )


def response_cost_nanos(raw) -> int:
    """LiteLLM's float response cost, rounded by our money rule."""
    return money_from_input(raw.headers["x-litellm-response-cost"])


def dollars(nanos: int) -> Decimal:
    return Decimal(nanos) / NANOS_PER_UNIT


def eventually(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) for work LiteLLM does after answering: its logging runs in the background."""
    deadline = time.monotonic() + SETTLE_WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"not within {SETTLE_WAIT_SECONDS} s: {what}"
        time.sleep(0.1)


def settled(admin: BillingClient, user_id: str, requests: int):
    """The user's budget once ``requests`` usage rows are in and no hold is left."""

    def done() -> bool:
        usage = admin.user_usage(user_id)
        return usage.total.requests == requests and admin.user_budget(user_id).budget.reserved == 0

    eventually(done, f"{requests} usage rows and no hold for {user_id}")
    return admin.user_budget(user_id).budget


def holds(db_path: Path, user_id: str, state: str) -> list[int]:
    with read_only(db_path) as db:
        rows = db.execute(
            "SELECT amount FROM reservations WHERE user_id = ? AND state = ?", (user_id, state)
        ).fetchall()
    return [row[0] for row in rows]


def spooled(spool_path: Path) -> int:
    with sqlite3.connect(f"file:{spool_path}?mode=ro", uri=True, timeout=10) as db:
        return db.execute("SELECT count(*) FROM usage_spool WHERE rejected IS NULL").fetchone()[0]


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
