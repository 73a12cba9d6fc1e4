"""Two server processes on one database (a SQLite file, or PostgreSQL) never overspend or
double-charge under concurrency."""

import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from integration_support import (
    BillingServer,
    Database,
    api_headers,
    create_product,
    dollars,
    dumps,
    hold_then_log,
    loads,
    provision_user,
    read_only,
    usage_body,
    user_budget,
)

from core.store.base import migration_scripts

WORKERS = 32
CYCLES = 200
BUDGET_DOLLARS = 50
DUPLICATES = 40
START_WAIT_SECONDS = 30.0
RESULT_WAIT_SECONDS = 120.0


@pytest.fixture(scope="module")
def servers(launch, database: Database) -> tuple[BillingServer, BillingServer]:
    # Spawned at the same instant on a new database: both race to apply the schema.
    first, second = launch.together(database, ["first", "second"])
    return first, second


def test_racing_first_starts_apply_the_schema_once(servers, database: Database) -> None:
    with read_only(database) as connection:
        versions = connection.execute(
            "SELECT version FROM schema_migrations ORDER BY version"
        ).fetchall()
        if isinstance(database, Path):
            assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    shipped = len(migration_scripts("sqlite_migrations"))
    assert shipped == len(migration_scripts("postgres_migrations"))
    assert versions == [(version,) for version in range(1, shipped + 1)]


def run_concurrently(servers, jobs: list, work) -> list:
    """Run ``work(client, job)`` for every job on WORKERS threads, each with its own client per
    server, alternating servers by job index; all threads start together at a barrier."""
    barrier = threading.Barrier(WORKERS, timeout=START_WAIT_SECONDS)
    results: list = [None] * len(jobs)

    def worker(worker_index: int) -> None:
        clients = [server.client() for server in servers]
        try:
            barrier.wait()
            for index in range(worker_index, len(jobs), WORKERS):
                results[index] = work(clients[index % len(clients)], jobs[index])
        finally:
            for client in clients:
                client.close()

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        futures = [pool.submit(worker, index) for index in range(WORKERS)]
        for future in futures:
            future.result(timeout=RESULT_WAIT_SECONDS)
    return results


def reserve_then_log(client: httpx.Client, job: tuple[str, str]) -> tuple[str, Decimal | None]:
    user_id, request_id = job
    placed = hold_then_log(client, user_id, request_id, denied_status="exceeded")
    return request_id, Decimal(1) if placed else None


def test_two_processes_admit_exactly_the_budget(servers, database: Database) -> None:
    first, _ = servers
    with first.client() as admin:
        create_product(admin, "fifty", BUDGET_DOLLARS)
        provision_user(admin, "usr_race", "fifty", "tenant_race")

    jobs = [("usr_race", f"race-{index:03d}") for index in range(CYCLES)]
    results = run_concurrently(servers, jobs, reserve_then_log)

    assert all(result is not None for result in results)
    admitted = [request_id for request_id, cost in results if cost is not None]
    logged_total = sum(cost for _, cost in results if cost is not None)
    assert len(admitted) == BUDGET_DOLLARS
    assert logged_total == BUDGET_DOLLARS

    for server in servers:
        with server.client() as client:
            assert user_budget(client, "usr_race") == {
                "total": BUDGET_DOLLARS,
                "used": BUDGET_DOLLARS,
                "remaining": 0,
                "reserved": 0,
            }

    with read_only(database) as connection:
        used, held = connection.execute(
            "SELECT used, held FROM users WHERE id = 'usr_race'"
        ).fetchone()
        rows, cost_sum = connection.execute(
            "SELECT COUNT(*), COALESCE(SUM(cost), 0) FROM usage WHERE user_id = 'usr_race'"
        ).fetchone()
        open_holds = connection.execute(
            "SELECT COUNT(*) FROM reservations WHERE user_id = 'usr_race' AND state = 'open'"
        ).fetchone()[0]
        settled = {
            row[0]
            for row in connection.execute(
                "SELECT request_id FROM reservations"
                " WHERE user_id = 'usr_race' AND state = 'settled'"
            )
        }
        total_holds = connection.execute(
            "SELECT COUNT(*) FROM reservations WHERE user_id = 'usr_race'"
        ).fetchone()[0]
        tenant_used, tenant_held = connection.execute(
            "SELECT used, held FROM tenants WHERE id = 'tenant_race'"
        ).fetchone()
    assert rows == BUDGET_DOLLARS
    assert cost_sum == used
    assert dollars(used) == BUDGET_DOLLARS
    assert held == 0
    assert open_holds == 0
    assert total_holds == BUDGET_DOLLARS
    assert settled == set(admitted)
    assert (tenant_used, tenant_held) == (used, 0)


def log_once(client: httpx.Client, job: tuple[str, str, Decimal]) -> tuple[int, str]:
    user_id, request_id, cost = job
    response = client.post(
        "/api/log-usage",
        content=dumps(usage_body(user_id, request_id, cost)),
        headers=api_headers(),
    )
    assert response.status_code in (200, 201), response.text
    return response.status_code, loads(response)["result"]


def test_concurrent_duplicate_logs_count_once(servers, database: Database) -> None:
    first, _ = servers
    with first.client() as admin:
        create_product(admin, "roomy", 1000)
        provision_user(admin, "usr_dup", "roomy", "tenant_dup")

    cost = Decimal("0.123456789")
    jobs = [("usr_dup", "dup-request", cost)] * DUPLICATES
    outcomes = run_concurrently(servers, jobs, log_once)

    assert sorted(outcomes) == [(200, "exists")] * (DUPLICATES - 1) + [(201, "created")]
    for server in servers:
        with server.client() as client:
            budget = user_budget(client, "usr_dup")
            assert budget["used"] == cost
            assert budget["remaining"] == 1000 - cost
    with read_only(database) as connection:
        rows = connection.execute(
            "SELECT cost FROM usage WHERE request_id = 'dup-request'"
        ).fetchall()
        used = connection.execute("SELECT used FROM users WHERE id = 'usr_dup'").fetchone()[0]
    assert len(rows) == 1
    assert rows[0][0] == used
    assert dollars(used) == cost


def reserve(client: httpx.Client, job: tuple[str, str, int]) -> dict:
    user_id, request_id, amount = job
    check = client.post(
        "/api/check-budget",
        content=dumps(
            {
                "user_id": user_id,
                "model": "gpt-4o",
                "cost_estimate": amount,
                "request_id": request_id,
            }
        ),
        headers=api_headers(),
    )
    assert check.status_code == 200, check.text
    return loads(check)


def test_concurrent_retries_of_one_hold_place_it_once(servers, database: Database) -> None:
    first, _ = servers
    with first.client() as admin:
        create_product(admin, "ten", 10)
        provision_user(admin, "usr_hold", "ten", "tenant_hold")

    answers = run_concurrently(servers, [("usr_hold", "hold-request", 3)] * DUPLICATES, reserve)

    assert all(answer["allowed"] for answer in answers)
    assert {answer["reservation"]["request_id"] for answer in answers} == {"hold-request"}
    assert len({answer["reservation"]["expires_at"] for answer in answers}) == 1
    for server in servers:
        with server.client() as client:
            assert user_budget(client, "usr_hold") == {
                "total": 10,
                "used": 0,
                "remaining": 7,
                "reserved": 3,
            }
    with read_only(database) as connection:
        holds = connection.execute(
            "SELECT amount, state FROM reservations WHERE user_id = 'usr_hold'"
        ).fetchall()
        held = connection.execute("SELECT held FROM users WHERE id = 'usr_hold'").fetchone()[0]
    assert holds == [(3 * 10**9, "open")]
    assert held == 3 * 10**9
