"""The monthly reset under gateway load: log-usage latency during the reset and outside it.

    python -m bench.reset_under_load [--users 1000000] [--usage-rows 10000000]
                                     [--databases sqlite,postgres] [--before 15] [--after 15]

For each database: a copy of the seed (``bench.seed``; PostgreSQL: a scratch database filled
from it), ``billing serve`` on it, and wrk driving log-usage at ``--connections`` (one per wrk
thread, ``lua/timed_post.lua``, which records every request's start and latency). After
``--before`` seconds the bare ``POST /api/admin/reset-budgets`` (close every open period, as on
the 1st) is sent; ``--after`` seconds after it answers, wrk stops. A request is *during* the
reset when it overlaps the reset's call, else *outside* (the first ``--warmup`` seconds left
out). Then, with the server stopped, a second reset of the same database is run in process,
batch by batch, to time each batch's transaction alone: how long a reset keeps other writes
waiting at a time. Any non-2xx answer, socket error or counter mismatch fails the run.
Results are printed and written to ``bench/results/reset-under-load-*.json``.
"""

import argparse
import json
import math
import os
import signal
import sqlite3
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, cast

import psycopg

from bench import BENCH_DIR, RESULTS_DIR, BenchFailure
from bench.databases import POSTGRES_ADMIN_URL, prepared_databases
from bench.machine import code_state, machine_info
from bench.processes import Process, billing_command, free_port, server_env
from bench.scenarios import ADMIN_KEY, API_KEY, LARGE_USAGE_ROWS, LARGE_USERS, SCENARIOS
from bench.seed import ZONE, seeded_database
from core.ledger import Ledger, wall_clock_ms
from core.prices import load_price_table
from core.resets import RESET_BATCH_USERS_MAX, ResetOutcome, ResetRequest, ResetRun
from core.settings import Settings
from core.store import open_store
from core.store.base import LedgerStore

LUA_SCRIPT = BENCH_DIR / "lua" / "timed_post.lua"
RESET_WAIT_SECONDS_MAX = 600.0
WRK_STOP_SECONDS_MAX = 30.0
SERVER_THREADS = 32
# timed_post.lua writes its lines every 0.25 s: the last window ends this long before wrk stops.
TAIL_LOST_SECONDS = 0.5
# The targets: log-usage p99 during the reset at most this, and at most this many times the p99
# outside it; the reset done within this.
P99_DURING_MS_MAX = 100.0
P99_RATIO_MAX = 3.0
RESET_SECONDS_MAX = 60.0

_WRK_NON_2XX = "Non-2xx or 3xx responses"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reset_under_load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--users", type=int, default=LARGE_USERS)
    parser.add_argument("--usage-rows", type=int, default=LARGE_USAGE_ROWS)
    parser.add_argument("--databases", default="sqlite", help="comma-separated: sqlite,postgres")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--before", type=float, default=15.0, help="seconds of load first")
    parser.add_argument("--after", type=float, default=15.0, help="seconds of load after")
    parser.add_argument("--warmup", type=float, default=3.0, help="first seconds left out")
    parser.add_argument("--postgres-url", default=POSTGRES_ADMIN_URL)
    parser.add_argument(
        "--alone-batch-users",
        default=str(RESET_BATCH_USERS_MAX),
        help="comma-separated batch sizes of the resets timed alone (default: the service's;"
        " empty: none)",
    )
    arguments = parser.parse_args(argv)
    kinds = [kind.strip() for kind in arguments.databases.split(",") if kind.strip()]
    batch_sizes = [int(size) for size in arguments.alone_batch_users.split(",") if size]
    seed = seeded_database(arguments.users, arguments.usage_rows)
    print(f"seed: {seed.path.name} ({arguments.users:,} users)", flush=True)
    results = {
        "machine": machine_info(),
        "code": code_state(),
        "load_average_before": os.getloadavg(),
        "users": arguments.users,
        "usage_rows": arguments.usage_rows,
        "connections": arguments.connections,
        "workers": arguments.workers,
        "reset_batch_users_max": RESET_BATCH_USERS_MAX,
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-reset-") as scratch:
        for kind in kinds:
            workdir = Path(scratch) / kind
            workdir.mkdir()
            tag = f"reset{time.time_ns():x}"
            with prepared_databases(
                seed.path, workdir, [kind], arguments.postgres_url, tag
            ) as databases:
                database_url = databases.urls[kind]
                databases.before_run(kind)
                run = measure_under_load(database_url, workdir, arguments, tag)
                check_counters(database_url)
                run["batches_alone"] = []
                for users_max in batch_sizes:
                    run["batches_alone"].append(time_batches(database_url, users_max))
                    check_counters(database_url)
            run["load_average_after"] = os.getloadavg()
            results["runs"][kind] = run
            print_run(kind, run)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"reset-under-load-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten: {path}")


def measure_under_load(
    database_url: str, workdir: Path, arguments: argparse.Namespace, tag: str
) -> dict:
    """wrk log-usage throughout, the reset fired in the middle; latencies split by overlap."""
    port = free_port()
    env = server_env(port, SERVER_THREADS, workdir / "data", database_url, arguments.workers)
    server = Process("billing serve", billing_command(), env, workdir / "server.log", port)
    try:
        server.wait_ready("/")
        prefix = workdir / "latency-"
        wrk = start_wrk(server.base_url, arguments.connections, arguments.users, tag, prefix)
        try:
            time.sleep(arguments.before)
            reset_started = time.time()
            reply = reset_now(server.base_url)
            reset_ended = time.time()
            time.sleep(arguments.after)
        finally:
            output = stop_wrk(wrk)
        if server.popen.poll() is not None:
            raise BenchFailure(f"the server died during the run:\n{server.log_tail()}")
    finally:
        server.stop()
    if _WRK_NON_2XX in output or "Socket errors" in output:
        raise BenchFailure(f"wrk saw errors:\n{output}")
    records = read_records(prefix, arguments.connections)
    load_started = min(start for start, _, _ in records)
    window_start = load_started + arguments.warmup
    window_end = reset_ended + arguments.after - TAIL_LOST_SECONDS
    during, outside, non_2xx = [], [], 0
    for start, latency, status in records:
        if not 200 <= status < 300:
            non_2xx += 1
        end = start + latency
        if end >= reset_started and start <= reset_ended:
            during.append(latency)
        elif window_start <= start and end <= window_end:
            outside.append(latency)
    if non_2xx:
        raise BenchFailure(f"{non_2xx} non-2xx answers during the run")
    return {
        "reset_seconds": round(reset_ended - reset_started, 2),
        "users_reset": reply["users_reset"],
        "during": summary(during, reset_ended - reset_started),
        "outside": summary(outside, window_end - window_start - (reset_ended - reset_started)),
        "requests": len(records),
        "non_2xx": non_2xx,
    }


def start_wrk(
    base_url: str, connections: int, users: int, tag: str, prefix: Path
) -> subprocess.Popen:
    """wrk with one connection per thread, running until ``stop_wrk``."""
    [log_usage] = [scenario for scenario in SCENARIOS if scenario.name == "log_usage"]
    command = [
        "wrk",
        f"-t{connections}",
        f"-c{connections}",
        f"-d{int(RESET_WAIT_SECONDS_MAX * 2)}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA_SCRIPT),
        base_url + log_usage.path,
        "--",
        str(users),
        tag,
        log_usage.body,
        str(prefix),
    ]
    env = dict(os.environ, BENCH_API_KEY=API_KEY)
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def stop_wrk(wrk: subprocess.Popen) -> str:
    """SIGINT (wrk then prints its summary); returns what it printed."""
    wrk.send_signal(signal.SIGINT)
    try:
        output, _ = wrk.communicate(timeout=WRK_STOP_SECONDS_MAX)
    except subprocess.TimeoutExpired:
        wrk.kill()
        output, _ = wrk.communicate()
    return output


def reset_now(base_url: str) -> dict:
    """The bare reset, as an operator sends it: close every open period now."""
    request = urllib.request.Request(
        base_url + "/api/admin/reset-budgets", method="POST", headers={"X-Admin-Key": ADMIN_KEY}
    )
    with urllib.request.urlopen(request, timeout=RESET_WAIT_SECONDS_MAX) as answer:
        if answer.status != 200:
            raise BenchFailure(f"reset answered {answer.status}")
        return json.loads(answer.read())


def read_records(prefix: Path, threads: int) -> list[tuple[float, float, int]]:
    """(start s, latency s, status) of every answer the wrk threads wrote down."""
    records = []
    for thread in range(threads):
        with open(f"{prefix}{thread}") as lines:
            for line in lines:
                start_us, latency_us, status = line.split()
                records.append((int(start_us) / 1e6, int(latency_us) / 1e6, int(status)))
    if not records:
        raise BenchFailure("wrk recorded no request")
    return records


def summary(latencies_s: list[float], seconds: float) -> dict:
    ordered = sorted(latencies_s)
    if not ordered:
        return {"requests": 0}
    return {
        "requests": len(ordered),
        "requests_per_sec": round(len(ordered) / max(seconds, 1e-9), 1),
        "p50_ms": round(_nearest_rank(ordered, 0.50) * 1000, 2),
        "p99_ms": round(_nearest_rank(ordered, 0.99) * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def _nearest_rank(ordered: list[float], fraction: float) -> float:
    return ordered[math.ceil(len(ordered) * fraction) - 1]


class TimedResetStore:
    """The store as the ledger's reset sees it, timing its start and each batch; every other
    call goes to the store itself."""

    def __init__(self, store: LedgerStore) -> None:
        self._store = store
        self.start_ms = 0.0
        self.lanes = 0
        self.batch_ms: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def start_reset(self, request: ResetRequest, now_ms: int) -> ResetOutcome | ResetRun:
        began = time.perf_counter()
        started = self._store.start_reset(request, now_ms)
        self.start_ms = (time.perf_counter() - began) * 1000
        if isinstance(started, ResetRun):
            self.lanes = started.lanes
        return started

    def reset_batch(self, run_id: int, lane: int, users_max: int, now_ms: int) -> bool:
        began = time.perf_counter()
        done = self._store.reset_batch(run_id, lane, users_max, now_ms)
        self.batch_ms.append((time.perf_counter() - began) * 1000)
        return done


def time_batches(database_url: str, users_max: int) -> dict:
    """Another bare reset of the same database, in process and alone, by the service's own
    ``Ledger.reset_budgets`` in batches of ``users_max`` users and its lanes: each batch timed."""
    store = open_store(database_url, wall_clock_ms, "FULL")
    try:
        timed = TimedResetStore(store)
        ledger = Ledger(
            cast(LedgerStore, timed),
            load_price_table(),
            ZONE,
            Settings.model_fields["reservation_ttl_seconds"].default,
            reset_batch_users_max=users_max,
        )
        started = time.perf_counter()
        outcome = ledger.reset_budgets(None)  # the bare reset, as the server's ledger runs it
        total_s = time.perf_counter() - started
    finally:
        store.close()
    ordered = sorted(timed.batch_ms)
    return {
        "batch_users_max": users_max,
        "lanes": timed.lanes,
        "users_reset": outcome.users_reset,
        "seconds": round(total_s, 2),
        "start_ms": round(timed.start_ms, 2),
        "batches": len(timed.batch_ms),
        "batch_p50_ms": round(_nearest_rank(ordered, 0.50), 2),
        "batch_p99_ms": round(_nearest_rank(ordered, 0.99), 2),
        "batch_max_ms": round(ordered[-1], 2),
    }


def check_counters(database_url: str) -> None:
    """Every usage row counted once: in its user's open period or in one closed period; the
    tenants' used the sum of their users'."""
    queries = (
        "SELECT COALESCE(SUM(cost), 0) FROM usage",
        "SELECT COALESCE(SUM(used), 0) FROM users",
        "SELECT COALESCE(SUM(used), 0) FROM period_history",
        "SELECT COALESCE(SUM(used), 0) FROM tenants",
        "SELECT COUNT(*) FROM (SELECT user_id, period_start FROM period_history"
        " GROUP BY user_id, period_start HAVING COUNT(*) > 1) AS twice",
    )
    if database_url.startswith("sqlite:"):
        connection = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        try:
            rows = [connection.execute(query).fetchone()[0] for query in queries]
        finally:
            connection.close()
    else:
        with psycopg.connect(database_url) as pg:
            rows = [pg.execute(query).fetchone()[0] for query in queries]  # type: ignore[index]
    usage, users, history, tenants, closed_twice = rows
    if usage != users + history or tenants != users or closed_twice:
        raise BenchFailure(
            f"counters after the reset: usage {usage}, users {users} + history {history},"
            f" tenants {tenants}, periods closed twice {closed_twice}"
        )


def print_run(kind: str, run: dict) -> None:
    during, outside = run["during"], run["outside"]
    print(f"\n== {kind}: reset of {run['users_reset']:,} users in {run['reset_seconds']} s")
    print("| log-usage | requests | req/s | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|")
    for name, figures in (("outside the reset", outside), ("during the reset", during)):
        print(
            f"| {name} | {figures.get('requests', 0):,} | {figures.get('requests_per_sec')} |"
            f" {figures.get('p50_ms')} | {figures.get('p99_ms')} | {figures.get('max_ms')} |"
        )
    ratio = during["p99_ms"] / outside["p99_ms"]
    print(
        f"p99 during / outside: {ratio:.2f}× (target ≤ {P99_RATIO_MAX}×, ≤ {P99_DURING_MS_MAX} ms);"
        f" reset ≤ {RESET_SECONDS_MAX} s: {run['reset_seconds'] <= RESET_SECONDS_MAX}"
    )
    for alone in run["batches_alone"]:
        print(
            f"alone, in process, {alone['batch_users_max']} users per batch,"
            f" {alone['lanes']} lanes:"
            f" {alone['users_reset']:,} users in {alone['seconds']} s, start {alone['start_ms']}"
            f" ms, {alone['batches']} batches: p50 {alone['batch_p50_ms']} ms,"
            f" p99 {alone['batch_p99_ms']} ms, max {alone['batch_max_ms']} ms"
        )
    run["targets_met"] = (
        during["p99_ms"] <= P99_DURING_MS_MAX
        and ratio <= P99_RATIO_MAX
        and run["reset_seconds"] <= RESET_SECONDS_MAX
    )
    print(f"targets met: {run['targets_met']}", flush=True)


if __name__ == "__main__":
    main()
