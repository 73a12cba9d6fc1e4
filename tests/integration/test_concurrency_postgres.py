"""Two `billing serve` instances (separate processes) on one PostgreSQL database: 1,000
concurrent reservation cycles against one user under one tenant cap never overspend, leave no
hold, and keep `used` equal to the usage rows."""

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from integration_support import (
    BillingServer,
    admin_headers,
    create_product,
    dollars,
    dumps,
    hold_then_log,
    provision_user,
    read_only,
    user_budget,
)

CLIENT_THREADS = 32
CYCLES = 1_000
USER_BUDGET_DOLLARS = 500
TENANT_CAP_DOLLARS = 300
START_WAIT_SECONDS = 30.0
RESULT_WAIT_SECONDS = 300.0
USER_ID = "usr_many"
TENANT_ID = "tenant_many"


@pytest.fixture(scope="module")
def backend(postgres) -> str:
    """Only PostgreSQL here (SQLite's two-process test is test_concurrency.py)."""
    return "postgres"


@pytest.fixture(scope="module")
def servers(launch, database: str) -> list[BillingServer]:
    return launch.together(database, ["one", "two"])


def cycle(client: httpx.Client, request_id: str) -> bool:
    return hold_then_log(client, USER_ID, request_id, denied_status="tenant_exceeded")


def test_a_thousand_cycles_on_two_instances_respect_the_tenant_cap(servers, database) -> None:
    with servers[0].client() as admin:
        create_product(admin, "roomy", USER_BUDGET_DOLLARS)
        response = admin.post(
            "/api/admin/tenants",
            content=dumps({"id": TENANT_ID, "name": "Many", "monthly_budget": TENANT_CAP_DOLLARS}),
            headers=admin_headers(),
        )
        assert response.status_code in (200, 201), response.text
        provision_user(admin, USER_ID, "roomy", TENANT_ID)

    barrier = threading.Barrier(CLIENT_THREADS, timeout=START_WAIT_SECONDS)

    def worker(worker_index: int) -> list[tuple[str, bool]]:
        clients = [server.client() for server in servers]
        done = []
        try:
            barrier.wait()
            for index in range(worker_index, CYCLES, CLIENT_THREADS):
                request_id = f"many-{index:04d}"
                done.append((request_id, cycle(clients[index % len(clients)], request_id)))
        finally:
            for client in clients:
                client.close()
        return done

    with ThreadPoolExecutor(max_workers=CLIENT_THREADS) as pool:
        futures = [pool.submit(worker, index) for index in range(CLIENT_THREADS)]
        results = [item for future in futures for item in future.result(RESULT_WAIT_SECONDS)]

    assert len(results) == CYCLES
    admitted = {request_id for request_id, allowed in results if allowed}
    assert len(admitted) == TENANT_CAP_DOLLARS
    for server in servers:
        with server.client() as client:
            assert user_budget(client, USER_ID) == {
                "total": USER_BUDGET_DOLLARS,
                "used": TENANT_CAP_DOLLARS,
                "remaining": USER_BUDGET_DOLLARS - TENANT_CAP_DOLLARS,
                "reserved": 0,
            }
    with read_only(database) as connection:
        used, held = connection.execute(
            "SELECT used, held FROM users WHERE id = ?", (USER_ID,)
        ).fetchone()
        tenant_cap, tenant_used, tenant_held = connection.execute(
            "SELECT monthly_budget, used, held FROM tenants WHERE id = ?", (TENANT_ID,)
        ).fetchone()
        rows, cost_sum = connection.execute(
            "SELECT COUNT(*), COALESCE(SUM(cost), 0) FROM usage WHERE user_id = ?", (USER_ID,)
        ).fetchone()
        states = dict(
            connection.execute(
                "SELECT state, COUNT(*) FROM reservations WHERE user_id = ? GROUP BY state",
                (USER_ID,),
            ).fetchall()
        )
        settled = {
            row[0]
            for row in connection.execute(
                "SELECT request_id FROM reservations WHERE user_id = ? AND state = 'settled'",
                (USER_ID,),
            ).fetchall()
        }
    assert tenant_used <= tenant_cap  # no overspend
    assert dollars(used) == TENANT_CAP_DOLLARS
    assert (tenant_used, held, tenant_held) == (used, 0, 0)
    assert (rows, cost_sum) == (TENANT_CAP_DOLLARS, used)
    assert states == {"settled": TENANT_CAP_DOLLARS}  # no hold left open
    assert settled == admitted
