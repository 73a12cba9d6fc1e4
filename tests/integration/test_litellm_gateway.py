"""The callback's admission in a real LiteLLM proxy with two workers, in front of a real
`billing serve`: with budget leases (the default) and with a hold per call (``lease_calls=0``).

A burst of five times what the budget admits, 32 at a time, never spends past it, and records
every admitted call once; calls without ``max_tokens`` fill a budget they fit.
"""

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import openai
import pytest
from integration_support import ADMIN_KEY, API_KEY, PASSWORD, read_only
from litellm_support import (
    Billing,
    billing_env,
    chat,
    dollars,
    eventually,
    holds,
    one_call_cost,
    proxy_client,
    response_cost_nanos,
    settled,
    spooled,
    start_proxy,
)

from client import BillingClient

PROXY_WORKERS = 2
BUDGET_CALLS = 20
BURST_CALLS = 5 * BUDGET_CALLS
BURST_CONCURRENCY = 32
# Output tokens a burst call may use: its estimate is then above what a mock call costs.
BURST_MAX_TOKENS = 20
GUESS_BUDGET_CALLS = 40
GUESS_CALLS = 60
CALLS_BEFORE_OUTAGE = 20
OUTAGE_SECONDS = 2.0
CALL_PAUSE_SECONDS = 0.05
# One user's calls, enough that a worker spends a slice of 20 estimates and one of 40.
STEADY_CALLS = 300
STEADY_CONCURRENCY = 8
# One user's calls further apart than the least time an unused slice stays (500 ms).
PACED_CALLS = 6
PACED_PAUSE_SECONDS = 0.7

ADMISSION = {"leases": {}, "hold-per-call": {"BILLING_LEASE_CALLS": "0"}}


@pytest.fixture(scope="module", params=list(ADMISSION))
def admission(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def billing(workdir: Path, admission: str) -> Iterator[Billing]:
    with Billing.running(workdir / admission) as service:
        yield service


@pytest.fixture(scope="module")
def admin(billing: Billing) -> Iterator[BillingClient]:
    with BillingClient(billing.base_url, API_KEY, ADMIN_KEY) as client:
        client.put_product("gw-plan", "Gateway plan", Decimal("10"))
        yield client


@pytest.fixture(scope="module")
def ai(billing: Billing, workdir: Path, admission: str) -> Iterator[openai.OpenAI]:
    folder = workdir / admission
    env = billing_env(billing, folder / "spool.sqlite3", **ADMISSION[admission])
    with start_proxy(folder, env, PROXY_WORKERS) as proxy, proxy_client(proxy) as client:
        yield client


def provision(admin: BillingClient, user_id: str, product_id: str = "gw-plan") -> None:
    admin.provision_user(f"{user_id}@example.test", PASSWORD, product_id, "gw-tenant", user_id)


def test_a_burst_of_five_times_the_budget_never_spends_past_it(
    ai: openai.OpenAI, admin: BillingClient, billing: Billing, admission: str
) -> None:
    provision(admin, "gw-probe")
    cost = one_call_cost(ai, admin, "gw-probe", max_tokens=BURST_MAX_TOKENS)
    budget = dollars(BUDGET_CALLS * cost)
    admin.put_product("gw-burst-plan", "Room for the burst", budget)
    provision(admin, "gw-burst", "gw-burst-plan")

    def attempt(_: int):
        try:
            return chat(ai, "gw-burst", max_tokens=BURST_MAX_TOKENS)
        except openai.RateLimitError:
            return None

    with ThreadPoolExecutor(max_workers=BURST_CONCURRENCY) as pool:
        answers = list(pool.map(attempt, range(BURST_CALLS)))
    admitted = [raw for raw in answers if raw is not None]
    assert 1 <= len(admitted) <= BUDGET_CALLS
    final = settled(admin, "gw-burst", len(admitted))
    assert final.used == dollars(sum(response_cost_nanos(raw) for raw in admitted))
    assert final.used <= budget
    call_ids = {raw.headers["x-litellm-call-id"] for raw in admitted}
    with read_only(billing.db_path) as db:
        logged = [
            row[0] for row in db.execute("SELECT request_id FROM usage WHERE user_id = 'gw-burst'")
        ]
        leases = db.execute(
            "SELECT count(*) FROM reservations WHERE user_id = 'gw-burst'"
            " AND request_id LIKE 'lease-%'"
        ).fetchone()[0]
    assert sorted(logged) == sorted(call_ids)
    assert holds(billing.db_path, "gw-burst", "open") == []
    if admission == "leases":
        assert leases >= 1
    else:
        assert leases == 0


def test_a_worker_s_slices_grow_while_one_user_keeps_spending_them(
    ai: openai.OpenAI, admin: BillingClient, billing: Billing, admission: str
) -> None:
    """Slices of 20 estimates, then 40, 80…: each slice is a round trip the user's calls on
    that worker wait for (``client.lease_sizes``)."""
    provision(admin, "gw-steady")
    with ThreadPoolExecutor(max_workers=STEADY_CONCURRENCY) as pool:
        answers = list(pool.map(lambda _: chat(ai, "gw-steady"), range(STEADY_CALLS)))
    settled(admin, "gw-steady", len(answers))
    with read_only(billing.db_path) as db:
        slices = db.execute(
            "SELECT request_id, amount FROM reservations WHERE user_id = 'gw-steady'"
            " AND request_id LIKE 'lease-%'"
        ).fetchall()
    if admission == "hold-per-call":
        assert slices == []
        return
    by_worker: dict[str, list[tuple[int, int]]] = {}
    for request_id, amount in slices:  # lease-<worker>-<n>
        _, worker, number = request_id.split("-")
        by_worker.setdefault(worker, []).append((int(number), amount))
    growth = [
        max(amount for _, amount in amounts) / min(amounts)[1] for amounts in by_worker.values()
    ]
    assert max(growth) >= 3.9, f"a worker's largest slice over its first: {growth}"


def test_a_user_calling_about_once_a_second_keeps_a_slice_between_calls(
    ai: openai.OpenAI, admin: BillingClient, billing: Billing, admission: str
) -> None:
    """An unused slice stays for a few of the user's gaps between calls
    (``client.call_gaps``): after the first call on each worker, which holds alone, every call
    is admitted on that worker's slice."""
    provision(admin, "gw-paced")
    for _ in range(PACED_CALLS):
        chat(ai, "gw-paced")
        time.sleep(PACED_PAUSE_SECONDS)
    settled(admin, "gw-paced", PACED_CALLS)
    own_holds = holds(billing.db_path, "gw-paced", "settled")
    slices = holds(billing.db_path, "gw-paced", "released", "lease-%")
    if admission == "hold-per-call":
        assert (len(own_holds), slices) == (PACED_CALLS, [])
        return
    assert len(own_holds) <= PROXY_WORKERS
    assert 1 <= len(slices) <= PROXY_WORKERS


def test_calls_without_max_tokens_fill_a_budget_they_fit(
    ai: openai.OpenAI, admin: BillingClient
) -> None:
    """The default estimate (1,024 output tokens) is far above a mock call's cost: each call
    holds what remains instead, so the budget is spent to within one call."""
    provision(admin, "gw-guess-probe")
    cost = one_call_cost(ai, admin, "gw-guess-probe", max_tokens=None)
    budget = dollars(GUESS_BUDGET_CALLS * cost)
    admin.put_product("gw-guess-plan", "Room for forty", budget)
    provision(admin, "gw-guess", "gw-guess-plan")
    admitted = []
    for _ in range(GUESS_CALLS):
        try:
            admitted.append(chat(ai, "gw-guess", max_tokens=None))
        except openai.RateLimitError:
            continue
    assert len(admitted) >= GUESS_BUDGET_CALLS - 1
    final = settled(admin, "gw-guess", len(admitted))
    assert final.used == dollars(sum(response_cost_nanos(raw) for raw in admitted))
    assert abs(final.used - budget) <= dollars(cost)


def test_calls_through_an_outage_are_billed_once_once_billing_is_back(
    ai: openai.OpenAI, admin: BillingClient, billing: Billing, admission: str, workdir: Path
) -> None:
    """One user calls without pause while billing stops for a while and comes back. On leases,
    a worker's slice goes on admitting calls with no round trip: their usage, then the slice's
    release after it, go through the spool. With a hold per call, every call that needs the
    service meanwhile is refused (503, fail_closed). Either way, once billing is back, every
    admitted call is billed once and no hold is left."""
    provision(admin, "gw-outage")
    spool_path = workdir / admission / "spool.sqlite3"
    admitted: list = []
    during: list = []
    refusals: list[int] = []
    outage = threading.Event()
    stop = threading.Event()

    def caller() -> None:
        while not stop.is_set():
            try:
                raw = chat(ai, "gw-outage")
            except openai.APIStatusError as error:
                refusals.append(error.status_code if outage.is_set() else -error.status_code)
                continue
            admitted.append(raw)
            if outage.is_set():
                during.append(raw)
            time.sleep(CALL_PAUSE_SECONDS)

    thread = threading.Thread(target=caller)
    thread.start()
    try:
        eventually(lambda: len(admitted) >= CALLS_BEFORE_OUTAGE, "calls before the outage")
        if admission == "leases":
            # On a busy machine a worker's calls can come further apart than BILLING_LEASE_IDLE_MS,
            # and it then holds call by call: the outage starts once a slice is held.
            eventually(
                lambda: holds(billing.db_path, "gw-outage", "open", "lease-%") != [], "a slice held"
            )
        outage.set()
        billing.stop()
        time.sleep(OUTAGE_SECONDS)
    finally:
        stop.set()
        thread.join()
    assert set(refusals) <= {503}, "refused only while billing was down, and only with 503"
    if admission == "leases":
        assert during, "no call was admitted on a lease while billing was down"
        eventually(lambda: spooled(spool_path) > 0, "usage of calls on a lease spooled")

    billing.start()
    final = settled(admin, "gw-outage", len(admitted))
    eventually(lambda: spooled(spool_path) == 0, "spool drained")
    assert final.used == dollars(sum(response_cost_nanos(raw) for raw in admitted))
    with read_only(billing.db_path) as db:
        logged = [
            row[0] for row in db.execute("SELECT request_id FROM usage WHERE user_id = 'gw-outage'")
        ]
    assert sorted(logged) == sorted(raw.headers["x-litellm-call-id"] for raw in admitted)
    assert holds(billing.db_path, "gw-outage", "open") == []
