"""`billing serve --workers 2`: both workers serve, each pinned to a CPU of its own, a dead worker
is replaced on its CPU, signals stop all; two servers share a Redis rate limit; the JSON logs
carry no key or password."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from integration_support import (
    ADMIN_KEY,
    API_KEY,
    PASSWORD,
    BillingServer,
    alive,
    api_headers,
    children_of,
    create_product,
    database_url,
    dumps,
    loads,
    provision_user,
    server_env,
)
from prometheus_client.parser import text_string_to_metric_families

from service.cpus import worker_cpu

WAIT_SECONDS = 20.0
POLL_SECONDS = 0.1
ROUNDS_MAX = 100
CONNECTIONS_PER_ROUND = 8


def wait_until(condition, what: str, server: BillingServer | None = None):
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(POLL_SECONDS)
    raise AssertionError(
        f"not within {WAIT_SECONDS} s: {what}\n" + (server.output() if server else "")
    )


def log_entries(server: BillingServer) -> list[dict]:
    """The server's JSON log lines (supervisor and workers write to the same stream)."""
    entries = []
    for line in server.output().splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


def scraped_samples(server: BillingServer, name: str) -> list:
    """The samples named ``name`` in one ``GET /metrics`` (answered by whichever worker)."""
    response = httpx.get(f"{server.base_url}/metrics", timeout=10.0)
    assert response.status_code == 200, response.text
    return [
        sample
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == name
    ]


def worker_pids_in_metrics(server: BillingServer) -> set[int]:
    samples = scraped_samples(server, "billing_worker_start_time_seconds")
    return {int(sample.labels["pid"]) for sample in samples}


def requests_in_metrics(server: BillingServer, route: str) -> float:
    """``billing_http_requests_total`` of ``route`` with status 200, over every worker."""
    return sum(
        sample.value
        for sample in scraped_samples(server, "billing_http_requests_total")
        if sample.labels["route"] == route and sample.labels["status"] == "200"
    )


def workers_of(server: BillingServer, count: int, without: int | None = None) -> set[int]:
    """The supervisor's workers once there are ``count`` of them (and ``without`` is gone)."""

    def settled() -> set[int] | None:
        found = children_of(server.pid)
        return found if len(found) == count and without not in found else None

    return wait_until(settled, f"{count} workers under {server.pid}", server)


def get_on_fresh_connections(
    server: BillingServer, path: str = "/", headers: dict[str, str] | None = None
) -> None:
    """GET ``path`` on several new connections at once (each may land on another worker)."""
    statuses: list[int] = []

    def one() -> None:
        with httpx.Client(base_url=server.base_url, timeout=10.0) as fresh:
            statuses.append(fresh.get(path, headers=headers or {}).status_code)

    threads = [threading.Thread(target=one) for _ in range(CONNECTIONS_PER_ROUND)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_SECONDS)
    assert statuses == [200] * CONNECTIONS_PER_ROUND, statuses


def pids_that_served(server: BillingServer, route: str) -> set[int]:
    return {
        entry["pid"]
        for entry in log_entries(server)
        if entry.get("logger") == "billing.request"
        and entry.get("route") == route
        and entry.get("status") == 200
    }


def served_by_every_worker(
    server: BillingServer, workers: set[int], path: str, headers: dict[str, str] | None = None
) -> set[int]:
    """Send rounds of requests until each worker has answered one; the pids that answered."""
    serving: set[int] = set()
    for _ in range(ROUNDS_MAX):
        get_on_fresh_connections(server, path, headers)
        serving = pids_that_served(server, path)
        if serving == workers:
            break
    return serving


@pytest.fixture(scope="module")
def server(launch, workdir: Path) -> BillingServer:
    return launch(workdir / "workers.db", "workers", workers=2)


def test_both_workers_serve_requests_on_one_port(server: BillingServer) -> None:
    workers = workers_of(server, 2)
    assert served_by_every_worker(server, workers, "/") == workers
    assert wait_until(lambda: worker_pids_in_metrics(server) == workers, "both workers in /metrics")


def cpus_of_every_thread(pid: int) -> set[frozenset[int]]:
    """The CPU sets the threads of process ``pid`` may run on, one entry per distinct set."""
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found.add(frozenset(os.sched_getaffinity(int(task.name))))
        except ProcessLookupError:
            continue  # the thread ended between the listing and the look-up
    return found


def pinned_cpu(pid: int) -> int:
    """The one CPU every thread of worker ``pid`` runs on, once it has pinned itself.

    A new interpreter pins itself early in its main (after logging is set up), a moment after
    the process appears.
    """

    def one_cpu() -> frozenset[int] | None:
        sets = cpus_of_every_thread(pid)
        only = next(iter(sets))
        return only if len(sets) == 1 and len(only) == 1 else None

    (cpu,) = wait_until(one_cpu, f"worker {pid} pinned")
    return cpu


def test_each_worker_and_all_its_threads_run_on_a_cpu_of_its_own(server: BillingServer) -> None:
    used = sorted(pinned_cpu(pid) for pid in workers_of(server, 2))
    assert used == sorted([worker_cpu(0), worker_cpu(1)])


def test_workers_roam_when_pinning_is_off(launch, workdir: Path) -> None:
    server = launch(
        workdir / "roam.db", "roam", workers=2, extra_env={"PIN_WORKERS_TO_CPUS": "false"}
    )
    everywhere = frozenset(os.sched_getaffinity(0))
    for pid in workers_of(server, 2):
        assert cpus_of_every_thread(pid) == {everywhere}


def test_every_worker_s_requests_reach_metrics(server: BillingServer) -> None:
    """A worker adds its counts to the shared files about once a second, so a scrape answered
    by one worker soon counts every request the other answered too."""
    workers = workers_of(server, 2)
    assert served_by_every_worker(server, workers, "/openapi.json") == workers

    def counted_everywhere() -> bool:
        logged = sum(
            1
            for entry in log_entries(server)
            if entry.get("route") == "/openapi.json" and entry.get("status") == 200
        )
        return requests_in_metrics(server, "/openapi.json") == logged

    assert wait_until(counted_everywhere, "every logged /openapi.json request in /metrics", server)


def test_a_worker_that_cannot_be_pinned_warns_and_serves(workdir: Path) -> None:
    """A worker given a CPU outside its set (a cpuset changed under a running server) logs a
    warning and serves unpinned. Started as the supervisor starts it: the listening socket's fd,
    the supervisor's pid (here, this test's), the CPU."""
    unusable_cpu = max(os.sched_getaffinity(0)) + 4096
    errors_path = workdir / "unpinned.stderr"
    env = server_env(
        DATA_DIR=str(workdir / "unpinned-data"),
        DATABASE_URL=database_url(workdir / "unpinned.db"),
        BILLING_API_KEY=API_KEY,
        ADMIN_SECRET_KEY=ADMIN_KEY,
    )
    with socket.create_server(("127.0.0.1", 0)) as listener, open(errors_path, "wb") as errors:
        port = listener.getsockname()[1]
        worker = subprocess.Popen(
            [sys.executable, "-m", "service.worker", str(listener.fileno()), str(os.getpid()),
             str(unusable_cpu)],
            env=env,
            pass_fds=[listener.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )  # fmt: skip

        def answers() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/", timeout=2.0).status_code == 200
            except httpx.TransportError:
                return worker.poll() is not None  # dead: stop waiting, fail below

        try:
            assert wait_until(answers, "the unpinned worker answering GET /")
            assert worker.poll() is None, errors_path.read_text()
            assert len(os.sched_getaffinity(worker.pid)) == len(os.sched_getaffinity(0))
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=WAIT_SECONDS)
    output = errors_path.read_text()
    assert worker.returncode == 0, output
    messages = [json.loads(line)["message"] for line in output.splitlines() if line.startswith("{")]
    assert any(f"not pinned to CPU {unusable_cpu}" in message for message in messages), output


def test_a_killed_worker_is_replaced_and_marked_dead(server: BillingServer) -> None:
    before = workers_of(server, 2)
    victim = min(before)
    victim_cpu = pinned_cpu(victim)
    os.kill(victim, signal.SIGKILL)
    after = workers_of(server, 2, without=victim)
    assert len(after & before) == 1
    (replacement,) = after - before
    assert pinned_cpu(replacement) == victim_cpu
    assert wait_until(lambda: worker_pids_in_metrics(server) == after, "metrics without the dead")
    reported = [
        entry
        for entry in log_entries(server)
        if entry.get("logger") == "billing.supervisor" and str(victim) in entry["message"]
    ]
    assert any("exited" in entry["message"] for entry in reported), reported


def test_keys_generated_at_first_start_open_every_worker(launch, workdir: Path) -> None:
    server = launch(workdir / "keys.db", "keys", workers=2, keys=False)
    workers = workers_of(server, 2)
    kept = json.loads((server.data_dir / "keys.json").read_text())
    admin = {"X-Admin-Key": kept["admin_secret_key"]}
    assert served_by_every_worker(server, workers, "/api/admin/products", admin) == workers


def test_sigterm_stops_the_supervisor_and_every_worker(launch, workdir: Path) -> None:
    server = launch(workdir / "sigterm.db", "sigterm", workers=2)
    workers = workers_of(server, 2)
    metrics_dir = Path(
        next(
            line.split("=", 1)[1]
            for line in Path(f"/proc/{min(workers)}/environ").read_text().split("\0")
            if line.startswith("PROMETHEUS_MULTIPROC_DIR=")
        )
    )
    assert metrics_dir.is_dir()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=WAIT_SECONDS) == 0, server.output()
    assert not any(alive(pid) for pid in workers)
    assert not metrics_dir.exists()


def test_workers_exit_when_the_supervisor_is_killed(launch, workdir: Path) -> None:
    server = launch(workdir / "sigkill.db", "sigkill", workers=2)
    workers = workers_of(server, 2)
    server.process.kill()
    server.process.wait(timeout=WAIT_SECONDS)
    wait_until(lambda: not any(alive(pid) for pid in workers), "workers gone with the supervisor")


def test_two_servers_share_one_redis_limit_per_user(
    launch, workdir: Path, redis_url: str, redis_prefix: str
) -> None:
    limit = 4
    env = {
        "REDIS_URL": redis_url,
        "RATE_LIMIT_PER_USER": f"{limit}/minute",
        "RATE_LIMIT_KEY_PREFIX": redis_prefix,
    }
    first, second = launch.together(
        workdir / "shared-limit.db", ["limit-a", "limit-b"], extra_env=env
    )
    with first.client() as one, second.client() as two:
        assert loads(one.get("/"))["redis"] == "ok"
        create_product(one, "limited", 100)
        provision_user(one, "usr_limited", "limited", "tenant_limited")
        body = dumps({"user_id": "usr_limited", "cost_estimate": 1})
        statuses = [
            (one if index % 2 else two).post(
                "/api/check-budget", content=body, headers=api_headers()
            )
            for index in range(limit + 2)
        ]
    assert [response.status_code for response in statuses] == [200] * limit + [429, 429]
    refused = statuses[-1]
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"] == "rate_limited"


def test_logs_are_json_and_carry_no_key_or_password(
    launch, workdir: Path, dead_redis_url: str
) -> None:
    env = {"REDIS_URL": dead_redis_url, "RATE_LIMIT": "1000/second"}
    server = launch(workdir / "secrets.db", "secrets", workers=2, extra_env=env)
    with server.client() as client:
        create_product(client, "plan", 10)
        provision_user(client, "usr_secret", "plan", "tenant_secret")
        checked = client.post(
            "/api/check-budget",
            content=dumps({"user_id": "usr_secret", "cost_estimate": 1}),
            headers={**api_headers(), "X-Request-ID": "trace-secret-1"},
        )
        assert checked.status_code == 200
        assert checked.headers["x-request-id"] == "trace-secret-1"
        assert (
            client.get(
                "/api/users/usr_secret/budget", headers={"X-API-Key": "nope" * 5}
            ).status_code
            == 401
        )
        assert loads(client.get("/"))["redis"] == "error"
    server.stop()
    output = server.output()
    for secret in (API_KEY, ADMIN_KEY, PASSWORD, "hunter2", "nope" * 5):
        assert secret not in output
    entries = log_entries(server)
    assert any(entry.get("request_id") == "trace-secret-1" for entry in entries)
    assert any("rate limit store unavailable" in entry["message"] for entry in entries)
    requests = [entry for entry in entries if entry.get("logger") == "billing.request"]
    assert requests and all(
        {"method", "route", "status", "duration_ms", "request_id"} <= set(entry)
        for entry in requests
    )
