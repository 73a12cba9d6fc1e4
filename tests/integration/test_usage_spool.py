"""The spool (usage and hold releases) on a real SQLite file, forwarding to a real `billing serve`."""

import time
from decimal import Decimal
from pathlib import Path

import pytest
from integration_support import ADMIN_KEY, API_KEY, PASSWORD, BillingServer
from ports import free_port

from client import BillingClient, RetryPolicy
from client.calls import decimal_text
from client.spool import ReleaseRecord, SpoolForwarder, SpoolFull, UsageRecord, UsageSpool

QUICK_RETRY = RetryPolicy(attempts_max=1)
DRAIN_WAIT_SECONDS = 30.0


@pytest.fixture(scope="module")
def server(launch, workdir: Path) -> BillingServer:
    return launch(workdir / "spool-billing.db", "spool")


@pytest.fixture(scope="module")
def billing(server: BillingServer):
    with BillingClient(server.base_url, API_KEY, ADMIN_KEY) as client:
        client.put_product("spool-plan", "Spool plan", Decimal("10"))
        client.provision_user("spooler@example.test", PASSWORD, "spool-plan", user_id="spooler")
        yield client


def record(request_id: str, cost: str = "0.00022500000000000002") -> UsageRecord:
    return UsageRecord("spooler", "gpt-4o", request_id, 10, 20, cost, 15)


def drain(spool: UsageSpool, forwarder: SpoolForwarder) -> None:
    """Run ``forwarder`` in the background until nothing in ``spool`` is pending (bounded)."""
    forwarder.start()
    try:
        deadline = time.monotonic() + DRAIN_WAIT_SECONDS
        while spool.pending(10):
            assert time.monotonic() < deadline, f"spool not drained in {DRAIN_WAIT_SECONDS} s"
            time.sleep(0.05)
    finally:
        forwarder.stop()


def test_records_survive_a_restart_once_each(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    spool = UsageSpool(path, records_max=10)
    spool.put(record("r-1"))
    spool.put(record("r-2"))
    spool.put(record("r-1"))
    spool.close()

    reopened = UsageSpool(path, records_max=10)
    assert reopened.count() == 2
    assert [item.request_id for item in reopened.pending(10)] == ["r-1", "r-2"]
    assert reopened.pending(10)[0] == record("r-1")


def test_a_full_spool_refuses_more(tmp_path: Path) -> None:
    spool = UsageSpool(tmp_path / "spool.sqlite3", records_max=2)
    spool.put(record("f-1"))
    spool.put(record("f-2"))
    assert spool.full()
    with pytest.raises(SpoolFull):
        spool.put(record("f-3"))
    assert spool.count() == 2


def test_many_records_are_written_at_once_or_not_at_all(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    spool = UsageSpool(path, records_max=4)
    spool.put(record("m-1"))
    spool.put_many([record("m-1"), record("m-2"), record("m-3")])
    assert spool.count() == 3
    with pytest.raises(SpoolFull):
        spool.put_many([record("m-4"), record("m-5")])
    spool.put_many([record("m-4")], rejected="409 idempotency_conflict")
    spool.close()

    reopened = UsageSpool(path, records_max=4)
    assert reopened.count() == 4
    assert [item.request_id for item in reopened.pending(10)] == ["m-1", "m-2", "m-3"]


def test_releases_wait_behind_every_usage_record(tmp_path: Path) -> None:
    """A release frees budget: the usage spooled beside it is sent first, even when later."""
    spool = UsageSpool(tmp_path / "spool.sqlite3", records_max=10)
    spool.put_release("lease-1")
    time.sleep(0.002)
    spool.put(record("late-1"))
    assert spool.pending(10) == [record("late-1"), ReleaseRecord("lease-1")]
    assert spool.pending(1) == [record("late-1")]


def test_forwarding_waits_out_an_outage(tmp_path: Path) -> None:
    port = free_port()
    spool = UsageSpool(tmp_path / "spool.sqlite3", records_max=10)
    spool.put(record("o-1"))
    with BillingClient(f"http://127.0.0.1:{port}", API_KEY, retry=QUICK_RETRY) as nowhere:
        forwarder = SpoolForwarder(spool, nowhere, retry_seconds=1, batch_max=10)
        assert forwarder.forward_once() == 0
    assert [item.request_id for item in spool.pending(10)] == ["o-1"]


def test_a_wrong_key_keeps_records_pending(tmp_path: Path, server: BillingServer) -> None:
    """A 401 is the proxy's set-up at fault: records wait for the fix instead of being refused."""
    spool = UsageSpool(tmp_path / "spool.sqlite3", records_max=10)
    spool.put(record("k-1"))
    with BillingClient(server.base_url, "wrong-key-0123456789", retry=QUICK_RETRY) as wrong:
        assert SpoolForwarder(spool, wrong, retry_seconds=1, batch_max=10).forward_once() == 0
    assert [item.request_id for item in spool.pending(10)] == ["k-1"]


def test_background_forwarding_delivers_once_and_keeps_refusals(
    tmp_path: Path, billing: BillingClient
) -> None:
    spool = UsageSpool(tmp_path / "spool.sqlite3", records_max=10)
    record("d-already").send(billing)
    for request_id in ("d-1", "d-2", "d-already"):
        spool.put(record(request_id))
    spool.put(UsageRecord("nobody", "gpt-4o", "d-orphan", 1, 1, "0.1", None))
    drain(spool, SpoolForwarder(spool, billing, retry_seconds=0.05, batch_max=2))
    assert spool.count() == 1, "the refused record stays for an operator"
    usage = billing.user_usage("spooler")
    assert usage.total.requests == 3
    assert usage.total.cost == Decimal("0.000675")


def test_a_long_spool_drains_in_batches_without_waiting_between_full_rounds(
    tmp_path: Path, billing: BillingClient
) -> None:
    """250 records, 100 a round, a retry every 60 s: only rounds that follow a full one at once
    can drain them within the wait. A record of a user the service does not know is refused in
    its batch (404) and set aside; the others of that batch are taken."""
    spool = UsageSpool(tmp_path / "spool.sqlite3", records_max=1_000)
    spool.put_many([record(f"b-{index:03}", "0.001") for index in range(249)])
    spool.put(UsageRecord("nobody", "gpt-4o", "b-orphan", 1, 1, "0.1", None))
    before = billing.user_usage("spooler").total
    drain(spool, SpoolForwarder(spool, billing, retry_seconds=60, batch_max=100))
    assert spool.count() == 1, "the refused record stays for an operator"
    after = billing.user_usage("spooler").total
    assert after.requests - before.requests == 249
    assert after.cost - before.cost == Decimal("0.249")


def test_a_batch_refused_whole_is_sent_one_by_one(tmp_path: Path, billing: BillingClient) -> None:
    """A cost past the service's bound on one call makes the batch route refuse the whole
    request (422); sent alone, that record is refused and the others are taken."""
    spool = UsageSpool(tmp_path / "spool.sqlite3", records_max=10)
    spool.put(record("w-1", "0.001"))
    spool.put(record("w-huge", "2000000"))
    spool.put(record("w-2", "0.001"))
    before = billing.user_usage("spooler").total.requests
    forwarder = SpoolForwarder(spool, billing, retry_seconds=1, batch_max=10)
    assert forwarder.forward_once() == 2
    assert spool.pending(10) == [] and spool.count() == 1
    assert billing.user_usage("spooler").total.requests - before == 2


def test_releases_are_kept_beside_usage_and_count_toward_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    spool = UsageSpool(path, records_max=3)
    spool.put(record("u-1"))
    spool.put_release("h-1")
    spool.put_release("h-1")
    assert spool.count() == 2
    spool.put_release("h-2")
    assert spool.full()
    with pytest.raises(SpoolFull):
        spool.put_release("h-3")
    spool.close()

    reopened = UsageSpool(path, records_max=3)
    assert reopened.count() == 3
    pending = {record("u-1"), ReleaseRecord("h-1"), ReleaseRecord("h-2")}
    assert set(reopened.pending(10)) == pending


def test_a_spooled_release_frees_its_hold_and_a_refused_one_is_dropped(
    tmp_path: Path, billing: BillingClient
) -> None:
    """Refused: a hold that became usage (409) and one the service never had (404)."""
    billing.provision_user("releaser@example.test", PASSWORD, "spool-plan", user_id="releaser")
    billing.reserve("releaser", "rel-open", Decimal("0.5"))
    billing.reserve("releaser", "rel-settled", Decimal("0.25"))
    billing.log_usage("releaser", "gpt-4o", "rel-settled", 1, 1, "0.125")
    assert billing.user_budget("releaser").budget.reserved == Decimal("0.5")
    spool = UsageSpool(tmp_path / "spool.sqlite3", records_max=10)
    for request_id in ("rel-open", "rel-settled", "rel-unknown"):
        spool.put_release(request_id)

    forwarder = SpoolForwarder(spool, billing, retry_seconds=1, batch_max=10)
    assert forwarder.forward_once() == 1
    assert spool.count() == 0
    budget = billing.user_budget("releaser").budget
    assert budget.reserved == 0
    assert budget.used == Decimal("0.125")


@pytest.mark.parametrize(
    ("reported", "text"),
    [
        (0.00022500000000000002, "0.00022500000000000002"),
        (0.1, "0.1"),
        (3, "3"),
        ("0.5", "0.5"),
        (None, None),
        (float("nan"), None),
        (float("inf"), None),
        (-0.1, None),
        ("abc", None),
    ],
)
def test_reported_costs_become_exact_decimal_text(reported: object, text: str | None) -> None:
    assert decimal_text(reported) == text
