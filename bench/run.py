"""The benchmark runner: the real ``billing serve`` and a bare Falcon app, both driven by wrk.

    python -m bench.run [--duration 10] [--warmup 2] [--repeat 3] [--threads N] [--large]
                        [--active-users N] [--databases sqlite,postgres] [--workers 1,2]

For each database size (small: 1,000 users, no usage; with ``--large`` also 1,000,000 users and
10,000,000 usage rows) it copies the seeded database (see ``bench.seed``), starts ``billing
serve`` on it and ``python -m bench.bare_app`` (same waitress settings, via
``api.server.run_waitress``), then runs wrk for each scenario at 32 connections (``-t2 -c32``:
throughput) and at 1 connection (``-t1 -c1``: the latency one request adds), each measured run
after a warm-up run, ``--repeat`` times in interleaved rounds; the table shows medians. Any
non-2xx answer or socket error fails the run. Results are printed and written to
``bench/results/`` as JSON and markdown, with the targets of issue 2 §9 checked.

Every (database, workers) pair given by ``--databases`` and ``--workers`` is a server of its own,
all measured in the same interleaved rounds against the same bare app, so issue 4's targets
(PostgreSQL check-budget ≥ 0.5× SQLite's; ``--workers 2`` ≥ 1.4× ``--workers 1``) compare
figures of one run. PostgreSQL gets a scratch database on ``--postgres-url``'s server, filled
with the same rows as the SQLite seed and dropped afterwards (small database only).
"""

import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from bench import RESULTS_DIR, BenchFailure
from bench.load import in_app_latency, run_wrk
from bench.machine import (
    BUSY_FRACTION_MAX,
    CpuMeter,
    code_state,
    cpu_seconds,
    machine_info,
    processes_named,
    warn_if_busy,
    with_descendants,
)
from bench.measurements import Measurement, Sample, SizeRun, fill_ratios
from bench.processes import Process, billing_command, free_port, server_env, smoke_test
from bench.report import build_report, markdown, print_summary, write_results
from bench.scenarios import (
    LARGE_USAGE_ROWS,
    LARGE_USERS,
    LOADS,
    SCENARIOS,
    SMALL_USERS,
    Scenario,
    Variant,
    variants,
)
from bench.seed import seeded_database
from bench.targets import evaluate_targets
from core.ledger import wall_clock_ms
from core.settings import Settings
from core.store import open_store
from core.store.postgres import autovacuum_off

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SEED_TABLES = ("products", "tenants", "users", "usage")


# -- one database size -----------------------------------------------------------------------


def run_size(
    name: str, users: int, usage_rows: int, arguments: argparse.Namespace, workdir: Path
) -> SizeRun:
    print(f"\n== {name}: {users:,} users, {usage_rows:,} usage rows", flush=True)
    busy_before = warn_if_busy()
    seed = seeded_database(users, usage_rows)
    how = "cached" if seed.cached else f"built in {seed.seconds:.1f} s"
    print(f"   seed: {seed.path.name} ({how})", flush=True)
    size_run = SizeRun(name, users, usage_rows, seed.seconds, seed.cached, busy_before)
    # Requests pick a user uniformly among the first ``picked`` (default: all of them).
    picked = users if arguments.active_users is None else min(arguments.active_users, users)
    size_run.picked_users = picked

    size_dir = workdir / name
    size_dir.mkdir(parents=True)
    databases: dict[str, str] = {}  # database kind → DATABASE_URL the servers share
    scratch_postgres: str | None = None
    tag_base = f"r{time.time_ns():x}"
    services: dict[Variant, Process] = {}
    bare = None
    try:
        if "sqlite" in arguments.databases:
            databases["sqlite"] = _copy_sqlite_seed(seed.path, size_dir / "billing.db")
        if "postgres" in arguments.databases:
            scratch_postgres, databases["postgres"] = _postgres_from_seed(
                seed.path, arguments.postgres_url, tag_base
            )
        analyze_postgres = "postgres" in databases and _autovacuum_off(databases["postgres"])
        if analyze_postgres:
            print(
                "   PostgreSQL's autovacuum is off: ANALYZE before each PostgreSQL run, as"
                " autovacuum would have by then",
                flush=True,
            )
        for variant in variants(arguments.databases, arguments.workers):
            port = free_port()
            services[variant] = Process(
                f"billing serve ({variant.label})",
                billing_command(),
                server_env(
                    port,
                    arguments.threads,
                    size_dir / "data",
                    databases[variant.database],
                    variant.workers,
                ),
                RESULTS_DIR / f"server-{name}-{variant.database}-{variant.workers}.log",
                port,
            )
        bare_port = free_port()
        bare = Process(
            "bare app",
            [sys.executable, "-m", "bench.bare_app"],
            server_env(bare_port, arguments.threads, size_dir / "data-bare", None),
            RESULTS_DIR / f"bare-{name}.log",
            bare_port,
        )
        bare.wait_ready("/")
        for variant, service in services.items():
            service.wait_ready("/")
            smoke_test(service, bare, f"{tag_base}-{variant.database}-{variant.workers}")
        print(
            f"   servers ready ({', '.join(v.label for v in services)}, bare;"
            f" threads={arguments.threads})",
            flush=True,
        )
        targets: list[tuple[Scenario, str, Process]] = []
        for scenario in SCENARIOS:
            if scenario.target == "bare":
                targets.append((scenario, "", bare))
            else:
                targets.extend((scenario, v.label, service) for v, service in services.items())
        measurements = {
            (scenario.name, label, connections): Measurement(
                name, scenario.name, label, connections, wrk_threads, arguments.duration
            )
            for connections, wrk_threads in LOADS
            for scenario, label, _ in targets
        }
        server_pids = tuple(p.popen.pid for p in (bare, *services.values()))
        # The processes whose CPU a request of each server costs: it, its workers and, on
        # PostgreSQL, the database's own server processes.
        postgres_pids = processes_named("postgres") if "postgres" in databases else ()
        cost_pids = {bare: with_descendants((bare.popen.pid,))}
        for variant, service in services.items():
            extra = postgres_pids if variant.database == "postgres" else ()
            cost_pids[service] = with_descendants((service.popen.pid,)) + extra
        # Rounds interleave the scenarios, so a slow spell of the machine hits bare and service
        # alike instead of one scenario's every run.
        for round_index in range(arguments.repeat):
            for connections, wrk_threads in LOADS:
                for scenario, label, target in targets:
                    server = label.replace(" ×", "w") or "bare"
                    tag = f"{tag_base}-{round_index}-{scenario.name}-{server}-c{connections}"
                    if analyze_postgres and label.startswith("postgres"):
                        _analyze(databases["postgres"])
                    if arguments.warmup > 0:
                        run_wrk(
                            scenario,
                            target.base_url,
                            connections,
                            wrk_threads,
                            arguments.warmup,
                            picked,
                            tag + "-warm",
                        )
                    log_offset = target.log_path.stat().st_size
                    meter = CpuMeter(server_pids, postgres="postgres" in databases)
                    cpu_seconds_before = cpu_seconds(cost_pids[target])
                    result = run_wrk(
                        scenario,
                        target.base_url,
                        connections,
                        wrk_threads,
                        arguments.duration,
                        picked,
                        tag,
                    )
                    cpu_used_seconds = cpu_seconds(cost_pids[target]) - cpu_seconds_before
                    sample = Sample(
                        requests=result["requests"],
                        requests_per_sec=result["requests_per_sec"],
                        p50_ms=result["p50_us"] / 1000,
                        p90_ms=result["p90_us"] / 1000,
                        p99_ms=result["p99_us"] / 1000,
                        max_ms=result["max_us"] / 1000,
                        foreign_cpu=meter.foreign_share(),
                        cpu_us_per_request=cpu_used_seconds * 1e6 / result["requests"],
                    )
                    in_app = (
                        in_app_latency(target.log_path, log_offset, scenario.path)
                        if label
                        else None
                    )
                    if in_app is not None:
                        sample.app_p50_ms, sample.app_p99_ms = in_app
                    measurements[(scenario.name, label, connections)].samples.append(sample)
                    note = ""
                    if sample.foreign_cpu > BUSY_FRACTION_MAX:
                        note = (
                            f"  WARNING: other processes used {sample.foreign_cpu:.0%} of the CPUs"
                        )
                    in_app_note = (
                        ""
                        if sample.app_p99_ms is None
                        else f"  (in app p50 {sample.app_p50_ms:.2f}, p99 {sample.app_p99_ms:.2f})"
                    )
                    print(
                        f"   [{round_index + 1}/{arguments.repeat}] {scenario.label:<27}"
                        f" {label:<11} c={connections:<3} {sample.requests_per_sec:>8,.0f} req/s"
                        f"  p50 {sample.p50_ms:6.2f} ms  p99 {sample.p99_ms:6.2f} ms"
                        f"  CPU {sample.cpu_us_per_request:4.0f} µs/req{in_app_note}{note}",
                        flush=True,
                    )
        size_run.measurements.extend(measurements.values())
        for process in (bare, *services.values()):
            if process.popen.poll() is not None:
                raise BenchFailure(f"{process.name} died during the run:\n{process.log_tail()}")
        for process in (bare, *services.values()):
            process.stop()
        for database_url in databases.values():
            _check_ledger(database_url)
    finally:
        for process in (bare, *services.values()):
            if process is not None:
                process.stop()
        if scratch_postgres is not None:
            _drop_postgres(arguments.postgres_url, scratch_postgres)
    fill_ratios(size_run)
    return size_run


def _copy_sqlite_seed(seed_path: Path, db_path: Path) -> str:
    """A copy of the cached seed for this run (runs write to it); returns its DATABASE_URL."""
    started = time.monotonic()
    shutil.copyfile(seed_path, db_path)
    # Flush the copy now, so the kernel is not writing a gigabyte back during the measurements.
    descriptor = os.open(db_path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    print(f"   copied the database in {time.monotonic() - started:.1f} s", flush=True)
    return f"sqlite:///{db_path.resolve()}"  # absolute: sqlite:////…


def _postgres_from_seed(seed_path: Path, admin_url: str, tag: str) -> tuple[str, str]:
    """A scratch PostgreSQL database with the service's schema and the seed's rows.

    Returns its name and its DATABASE_URL; ``_drop_postgres`` removes it.
    """
    started = time.monotonic()
    name = f"bench_{tag}".lower()
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    database_url = _url_with_database(admin_url, name)
    open_store(database_url, wall_clock_ms, "FULL").close()  # applies the migrations
    source = sqlite3.connect(f"file:{seed_path}?mode=ro", uri=True)
    try:
        with psycopg.connect(database_url) as target:
            for table in SEED_TABLES:
                cursor = source.execute(f"SELECT * FROM {table}")
                columns = [column[0] for column in cursor.description]
                with target.cursor().copy(
                    f"COPY {table} ({', '.join(columns)}) FROM STDIN"
                ) as copy:
                    for row in cursor:
                        copy.write_row(row)
            target.execute("ANALYZE")
    finally:
        source.close()
    print(f"   filled PostgreSQL database {name} in {time.monotonic() - started:.1f} s", flush=True)
    return name, database_url


def _autovacuum_off(database_url: str) -> bool:
    with psycopg.connect(database_url) as connection:
        return autovacuum_off(connection)


def _analyze(database_url: str) -> None:
    """Fresh planner statistics, and with them fresh plans in every server connection.

    Without autovacuum, plans made while ``reservations`` was empty scan the whole table for
    each check once the hold runs have filled it (check-budget at one connection: 1,300 →
    560 req/s after 6 s of holds; back to 1,300 after an ANALYZE).
    """
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("ANALYZE")


def _url_with_database(admin_url: str, name: str) -> str:
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


def _drop_postgres(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _check_ledger(database_url: str) -> None:
    """After the run the counters still match the rows: the load changed nothing it should not.

    A SQLite file is opened read-write, as a restarted server would (a read-only connection
    cannot recover a WAL its last writer left), and must pass ``PRAGMA quick_check``.
    """
    queries = (
        "SELECT COALESCE(SUM(cost), 0) FROM usage",
        "SELECT COALESCE(SUM(used), 0), COALESCE(SUM(held), 0) FROM users",
        "SELECT COALESCE(SUM(amount), 0) FROM reservations WHERE state = 'open'",
    )
    if database_url.startswith("sqlite:"):
        connection = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        try:
            problems = [row[0] for row in connection.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise BenchFailure(f"the database fails quick_check after the run: {problems[:5]}")
            rows = [connection.execute(query).fetchone() for query in queries]
        finally:
            connection.close()
    else:
        with psycopg.connect(database_url) as connection:
            rows = [connection.execute(query).fetchone() for query in queries]
    (usage_sum,), (used_sum, held_sum), (open_sum,) = rows
    if usage_sum != used_sum or held_sum != open_sum:
        raise BenchFailure(
            f"ledger counters do not match after the run: usage {usage_sum} vs used {used_sum},"
            f" open holds {open_sum} vs held {held_sum}"
        )


# -- main ------------------------------------------------------------------------------------


def _choices_list(allowed: set[str]):
    def parse(text: str) -> list[str]:
        values = [value.strip() for value in text.split(",") if value.strip()]
        if not values or not set(values) <= allowed:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(sorted(allowed))}")
        return list(dict.fromkeys(values))

    return parse


def _numbers_list(text: str) -> list[int]:
    try:
        values = [int(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("comma-separated whole numbers") from None
    if not values or any(value < 1 or value > 64 for value in values):
        raise argparse.ArgumentTypeError("each between 1 and 64")
    return list(dict.fromkeys(values))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up before each run")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="measured runs per scenario, interleaved; the table shows medians",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=Settings.model_fields["threads"].default,
        help="waitress threads for both servers (default: the service's default)",
    )
    parser.add_argument(
        "--active-users",
        type=int,
        default=None,
        help="requests pick among the first N users only (default: every user of the database)",
    )
    parser.add_argument(
        "--large",
        action="store_true",
        help=f"also run on {LARGE_USERS:,} users and {LARGE_USAGE_ROWS:,} usage rows",
    )
    parser.add_argument(
        "--databases",
        type=_choices_list({"sqlite", "postgres"}),
        default=["sqlite"],
        help="comma-separated: sqlite, postgres (default: sqlite)",
    )
    parser.add_argument(
        "--workers",
        type=_numbers_list,
        default=[1],
        help="comma-separated worker counts, each a server of its own (default: 1)",
    )
    parser.add_argument(
        "--postgres-url",
        default=POSTGRES_ADMIN_URL,
        help="a PostgreSQL server where the run may create and drop a scratch database",
    )
    arguments = parser.parse_args(argv)
    if arguments.large and "postgres" in arguments.databases:
        parser.error("--large runs on SQLite only (the PostgreSQL copy covers the small database)")
    if arguments.duration < 1 or arguments.warmup < 0 or arguments.repeat < 1:
        parser.error("--duration and --repeat must be at least 1, --warmup at least 0")
    if arguments.active_users is not None and arguments.active_users < 1:
        parser.error("--active-users must be at least 1")
    if shutil.which("wrk") is None:
        raise SystemExit("bench: wrk is not installed (apt-get install wrk)")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)

    machine = machine_info()
    code = code_state()
    print(
        f"code: {code['commit']}"
        + (
            f" + uncommitted changes in {', '.join(code['uncommitted'])}"
            if code["uncommitted"]
            else ""
        ),
        flush=True,
    )
    print("machine: " + ", ".join(f"{key}={value}" for key, value in machine.items()), flush=True)
    sizes = [("small", SMALL_USERS, 0)]
    if arguments.large:
        sizes.append(("large", LARGE_USERS, LARGE_USAGE_ROWS))

    runs: list[SizeRun] = []
    with tempfile.TemporaryDirectory(prefix="bench-", dir=RESULTS_DIR) as workdir:
        for name, users, usage_rows in sizes:
            runs.append(run_size(name, users, usage_rows, arguments, Path(workdir)))

    checks = evaluate_targets(runs)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report = build_report(
        machine,
        code,
        runs,
        checks,
        duration=arguments.duration,
        warmup=arguments.warmup,
        repeat=arguments.repeat,
        threads=arguments.threads,
        variants=[variant.label for variant in variants(arguments.databases, arguments.workers)],
    )
    written = write_results(stamp, report, markdown(report, runs, checks))
    print_summary(runs, checks, written)
    return 0 if all(check["pass"] for check in checks) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchFailure as failure:
        print(f"bench: FAILED: {failure}", file=sys.stderr)
        sys.exit(2)
