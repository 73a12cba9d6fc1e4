"""No client can crash a worker through its connections: thousands of idle connections (past
``select()``'s 1,023 descriptors and past the connection limit), and a worker short of
descriptors.

Each test runs one `billing serve --workers 1` on loopback, so every connection lands on the one
worker; timings are printed, and asserted only far above what was measured.
"""

import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from integration_support import (
    API_KEY,
    BillingServer,
    api_headers,
    children_of,
    create_product,
    dumps,
    provision_user,
    serving,
)

from api.server import (
    DESCRIPTORS_PER_CONNECTION,
    DESCRIPTORS_RESERVED,
    WAITRESS_CONNECTION_LIMIT,
    descriptors_needed,
)

IDLE_CONNECTIONS = 2_500
# select() cannot watch a descriptor at or above this (FD_SETSIZE).
SELECT_DESCRIPTORS_MAX = 1024
WAIT_SECONDS = 25.0
POLL_SECONDS = 0.1
CHECK = {"user_id": "prober", "cost_estimate": 1}
# Waitress's warning when it stops accepting.
CONNECTION_LIMIT_REACHED = "reached the connection limit"
LOG_SIGNS_OF_A_CRASH = ("Traceback", "exited with status", "out of range")


def raise_own_descriptor_limit(needed: int) -> None:
    """This test process holds the idle connections: its soft RLIMIT_NOFILE must cover them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed} descriptors this test holds")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def wait_until(condition: Callable[[], object], what: str, server: BillingServer) -> object:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(POLL_SECONDS)
    raise AssertionError(f"not within {WAIT_SECONDS} s: {what}\n" + server.output()[-5000:])


def only_worker(server: BillingServer) -> int:
    workers = children_of(server.pid)
    assert len(workers) == 1, workers
    return workers.pop()


def open_sockets(pid: int) -> int:
    count = 0
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(entry).startswith("socket:")
        except OSError:
            continue  # closed meanwhile
    return count


def assert_no_crash(server: BillingServer, worker: int) -> None:
    assert server.process.poll() is None, server.output()[-5000:]
    assert children_of(server.pid) == {worker}, "the worker was replaced"
    output = server.output()
    for sign in LOG_SIGNS_OF_A_CRASH:
        assert sign not in output, f"{sign!r} in the server's log:\n{output[-5000:]}"


def check_budget(client: httpx.Client) -> float:
    started = time.perf_counter()
    answer = client.post("/api/check-budget", content=dumps(CHECK), headers=api_headers())
    elapsed = time.perf_counter() - started
    assert answer.status_code == 200, answer.text
    return elapsed


def start_serving(workdir: Path, name: str) -> BillingServer:
    return BillingServer(workdir, workdir / f"{name}.db", name, workers=1)


def prepare(client: httpx.Client) -> None:
    create_product(client, "plain", 1_000_000)
    provision_user(client, "prober", "plain", "probes")


def busy_every_thread(server: BillingServer) -> None:
    """Requests enough at once that the worker's threads open their database connections, as
    they have in a server that has seen load (on SQLite three descriptors each)."""
    body = dumps(CHECK)
    request = (
        b"POST /api/check-budget HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        + f"X-API-Key: {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    connections = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(64)]
    for connection in connections:
        connection.sendall(request)
    for connection in connections:
        with connection:
            assert connection.recv(1 << 16).startswith(b"HTTP/1.1 200 ")


def test_a_worker_short_of_descriptors_raises_its_limit_or_accepts_fewer_connections() -> None:
    threads = 32
    needed = descriptors_needed(WAITRESS_CONNECTION_LIMIT, threads)
    program = (
        "import logging, resource, sys\n"
        "logging.basicConfig(stream=sys.stdout, format='%(message)s')\n"
        "from api.server import fit_connection_limit\n"
        f"print(fit_connection_limit({threads}), *resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )

    def run(soft: int, hard: int) -> list[str]:
        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

        done = subprocess.run(
            [sys.executable, "-c", program],
            preexec_fn=limit,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout.splitlines()

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard >= needed:
        assert run(256, hard) == [f"{WAITRESS_CONNECTION_LIMIT} {needed} {hard}"]
    low = min(hard, SELECT_DESCRIPTORS_MAX)
    fitting = (low - descriptors_needed(0, threads)) // DESCRIPTORS_PER_CONNECTION
    assert fitting < WAITRESS_CONNECTION_LIMIT
    warning, result = run(low, low)
    assert result == f"{fitting} {low} {low}"
    assert f"accepting at most {fitting} connections" in warning


def test_thousands_of_idle_connections_leave_the_worker_serving(workdir: Path) -> None:
    raise_own_descriptor_limit(IDLE_CONNECTIONS + DESCRIPTORS_RESERVED)
    server = start_serving(workdir, "idle")
    with serving(server) as gateway:
        prepare(gateway)
        worker = only_worker(server)
        busy_every_thread(server)
        # The gateway's pooled connection, open before the flood, as a gateway's would be.
        check_budget(gateway)
        idle = []
        try:
            started = time.perf_counter()
            for _ in range(IDLE_CONNECTIONS):
                connection = socket.socket()
                connection.setblocking(False)
                try:
                    connection.connect(("127.0.0.1", server.port))
                except BlockingIOError:
                    pass  # past the backlog the kernel keeps retrying the handshake
                idle.append(connection)
            wait_until(
                lambda: CONNECTION_LIMIT_REACHED in server.output(),
                f"worker holding {WAITRESS_CONNECTION_LIMIT} connections",
                server,
            )
            held = open_sockets(worker)
            highest = max(int(name) for name in os.listdir(f"/proc/{worker}/fd"))
            print(
                f"{IDLE_CONNECTIONS} idle connections opened; the worker holds {held} sockets,"
                f" its highest descriptor {highest}, {time.perf_counter() - started:.1f} s in"
            )
            assert highest >= SELECT_DESCRIPTORS_MAX
            latency = check_budget(gateway)
            print(f"check-budget on the gateway's connection meanwhile: {latency * 1000:.1f} ms")
            assert_no_crash(server, worker)
        finally:
            for connection in idle:
                connection.close()
        wait_until(
            lambda: open_sockets(worker) < SELECT_DESCRIPTORS_MAX // 4,
            "the worker closing the idle connections",
            server,
        )
        with server.client() as newcomer:
            latency = check_budget(newcomer)
        print(f"check-budget on a new connection once they left: {latency * 1000:.1f} ms")
        assert_no_crash(server, worker)
