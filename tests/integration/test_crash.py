"""Every write acknowledged before a SIGKILL, or before a SIGTERM, under load is there after
restart; counters agree and a SQLite file passes ``integrity_check`` (on a SQLite file and on
PostgreSQL, each with one worker and with two; two SQLite workers share the file and its write
lock).

The kill hits every process of the server: the supervisor is stopped first (so it replaces no
worker and signals none), then each worker and the supervisor get SIGKILL. The SIGTERM goes to
the supervisor, which stops its workers while writes are in flight: each finishes its requests
and closes its store.
"""

import os
import signal
import threading
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from integration_support import (
    BillingServer,
    Database,
    alive,
    api_headers,
    children_of,
    create_product,
    dollars,
    dumps,
    loads,
    provision_user,
    read_only,
    usage_body,
    user_budget,
)

LOAD_THREADS = 8
ACKNOWLEDGED_BEFORE_STOP = 200
REQUESTS_PER_THREAD_MAX = 5_000
ACK_WAIT_SECONDS = 30.0
JOIN_WAIT_SECONDS = 30.0
REPLAYS = 20
COST = Decimal("0.001")
KILL_WAIT_SECONDS = 10.0
TERM_WAIT_SECONDS = 20.0
# The store and the number of `billing serve` workers of each variant.
VARIANTS = {
    "sqlite": ("sqlite", 1),
    "sqlite-2-workers": ("sqlite", 2),
    "postgres": ("postgres", 1),
    "postgres-2-workers": ("postgres", 2),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def backend(variant: str, request: pytest.FixtureRequest) -> str:
    """The variant's store (the integration ``database`` fixture makes one per variant)."""
    name, _ = VARIANTS[variant]
    if name == "postgres":
        request.getfixturevalue("postgres")
    return name


def kill_server(server: BillingServer, workers: int) -> None:
    """SIGKILL the supervisor and each of its ``workers``, none of them warned."""
    os.kill(server.pid, signal.SIGSTOP)
    cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")
    assert b"serve" in cmdline, cmdline
    pids = children_of(server.pid)
    assert len(pids) == workers, (pids, server.output())
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    os.kill(server.pid, signal.SIGKILL)
    assert server.process.wait(timeout=KILL_WAIT_SECONDS) == -signal.SIGKILL
    deadline = time.monotonic() + KILL_WAIT_SECONDS
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(alive(pid) for pid in pids)


def terminate_server(server: BillingServer, workers: int) -> None:
    """SIGTERM the supervisor, as docker or systemd stop it; it must stop its workers and exit 0."""
    pids = children_of(server.pid)
    assert len(pids) == workers, (pids, server.output())
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=TERM_WAIT_SECONDS) == 0, server.output()
    assert not any(alive(pid) for pid in pids)


STOPS = {"sigkill": kill_server, "sigterm": terminate_server}


class WriteLoad:
    """Threads logging usage for ``user_id`` with unique request_ids (``prefix``-thread-n);
    records every one acknowledged with 201."""

    def __init__(self, server: BillingServer, user_id: str, prefix: str) -> None:
        self._server = server
        self._user_id = user_id
        self._prefix = prefix
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.acknowledged: list[str] = []
        self.unexpected: list[str] = []
        self.transport_errors = 0
        self._threads = [
            threading.Thread(target=self._run, args=(index,), daemon=True)
            for index in range(LOAD_THREADS)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def acknowledged_count(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=JOIN_WAIT_SECONDS)
        assert not any(thread.is_alive() for thread in self._threads), "load threads did not stop"

    def _run(self, thread_index: int) -> None:
        with self._server.client(timeout=10.0) as client:
            for sequence in range(REQUESTS_PER_THREAD_MAX):
                if self._stop.is_set():
                    return
                request_id = f"{self._prefix}-{thread_index}-{sequence}"
                try:
                    response = client.post(
                        "/api/log-usage",
                        content=dumps(usage_body(self._user_id, request_id, COST)),
                        headers=api_headers(),
                    )
                except httpx.TransportError:
                    # The server died (or the connection broke): this write was not acknowledged.
                    with self._lock:
                        self.transport_errors += 1
                    if self._server.process.poll() is not None:
                        return
                    continue
                with self._lock:
                    if response.status_code == 201:
                        self.acknowledged.append(request_id)
                    else:
                        self.unexpected.append(
                            f"{request_id}: {response.status_code} {response.text}"
                        )


@pytest.mark.parametrize("stop", list(STOPS))
def test_acknowledged_writes_survive_a_stop_under_load(
    launch, database: Database, variant: str, stop: str
) -> None:
    """Both stops of a variant share its database, each with its own plan, tenant and user."""
    _, workers = VARIANTS[variant]
    user_id, tenant_id, plan = f"usr_{stop}", f"tenant_{stop}", f"unlimited_{stop}"
    victim = launch(database, f"victim-{variant}-{stop}", workers=workers)
    with victim.client() as admin:
        create_product(admin, plan, 1_000_000)
        provision_user(admin, user_id, plan, tenant_id)

    load = WriteLoad(victim, user_id, stop)
    load.start()
    try:
        deadline = time.monotonic() + ACK_WAIT_SECONDS
        while load.acknowledged_count() < ACKNOWLEDGED_BEFORE_STOP and time.monotonic() < deadline:
            assert victim.process.poll() is None, victim.output()
            time.sleep(0.01)
        acknowledged_at_stop = load.acknowledged_count()
        assert acknowledged_at_stop >= ACKNOWLEDGED_BEFORE_STOP, (
            f"only {acknowledged_at_stop} writes acknowledged within {ACK_WAIT_SECONDS} s"
        )
        assert load.running(), "the load ended before the stop"
        STOPS[stop](victim, workers)
    finally:
        load.stop()

    assert load.unexpected == []
    acknowledged = list(load.acknowledged)
    assert len(acknowledged) >= acknowledged_at_stop

    survivor = launch(database, f"survivor-{variant}-{stop}", workers=workers)
    with read_only(database) as connection:
        stored = {row[0] for row in connection.execute("SELECT request_id FROM usage")}
        rows, cost_sum = connection.execute(
            "SELECT COUNT(*), COALESCE(SUM(cost), 0) FROM usage WHERE user_id = ?", (user_id,)
        ).fetchone()
        used, held = connection.execute(
            "SELECT used, held FROM users WHERE id = ?", (user_id,)
        ).fetchone()
        tenant_used, tenant_held = connection.execute(
            "SELECT used, held FROM tenants WHERE id = ?", (tenant_id,)
        ).fetchone()
        if isinstance(database, Path):
            assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    missing = [request_id for request_id in acknowledged if request_id not in stored]
    assert missing == []
    assert rows >= len(acknowledged)
    assert used == cost_sum
    assert (tenant_used, tenant_held) == (used, 0)
    assert held == 0
    assert dollars(used) == COST * rows

    with survivor.client() as client:
        assert user_budget(client, user_id)["used"] == COST * rows
        sample = acknowledged[:: max(1, len(acknowledged) // REPLAYS)] + [acknowledged[-1]]
        for request_id in sample:
            replay = client.post(
                "/api/log-usage",
                content=dumps(usage_body(user_id, request_id, COST)),
                headers=api_headers(),
            )
            assert replay.status_code == 200, replay.text
            assert loads(replay)["result"] == "exists"
        assert user_budget(client, user_id)["used"] == COST * rows
