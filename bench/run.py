"""The benchmark runner: the real ``billing serve`` and a bare Falcon app, both driven by wrk.

    python -m bench.run [--duration 10] [--warmup 2] [--repeat 3] [--threads N] [--large]
                        [--active-users N] [--databases sqlite,postgres] [--workers 1,2]

For each database size (small: 1,000 users, no usage; with ``--large`` also 1,000,000 users and
10,000,000 usage rows) it copies the seeded database (see ``bench.seed``), starts ``billing
serve`` on it and ``python -m bench.bare_app`` (same waitress settings, via
``service.server.run_waitress``), then runs wrk for each scenario at 32 connections (``-t2 -c32``:
throughput) and at 1 connection (``-t1 -c1``: the latency one request adds), each measured run
after a warm-up run, ``--repeat`` times in interleaved rounds; the table shows medians. Any
non-2xx answer or socket error fails the run. Results are printed and written to
``bench/results/`` as JSON and markdown, with the targets (``bench.targets``) checked.

Every (database, workers) pair given by ``--databases`` and ``--workers`` is a server of its own,
all measured in the same interleaved rounds against the same bare app, so the scaling targets
(PostgreSQL check-budget ≥ 0.5× SQLite's; ``--workers 2`` ≥ 1.4× ``--workers 1``) compare
figures of one run. PostgreSQL gets a scratch database on ``--postgres-url``'s server, filled
with the same rows as the SQLite seed and dropped afterwards (small database only).
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import RESULTS_DIR, BenchFailure
from bench.databases import POSTGRES_ADMIN_URL, prepared_databases
from bench.machine import code_state, machine_info, warn_if_busy
from bench.measurements import SizeRun, fill_ratios
from bench.processes import started_servers
from bench.report import build_report, markdown, print_summary, write_results
from bench.rounds import measure_rounds
from bench.scenarios import LARGE_USAGE_ROWS, LARGE_USERS, SMALL_USERS, variants
from bench.seed import seeded_database
from bench.targets import evaluate_targets
from core.settings import Settings


def run_size(
    name: str, users: int, usage_rows: int, arguments: argparse.Namespace, workdir: Path
) -> SizeRun:
    """One database size: its seed copied, its servers started, its rounds measured."""
    print(f"\n== {name}: {users:,} users, {usage_rows:,} usage rows", flush=True)
    busy_before = warn_if_busy()
    seed = seeded_database(users, usage_rows)
    how = "cached" if seed.cached else f"built in {seed.seconds:.1f} s"
    print(f"   seed: {seed.path.name} ({how})", flush=True)
    size_run = SizeRun(name, users, usage_rows, seed.seconds, seed.cached, busy_before)
    # Requests pick a user uniformly among the first ``picked_users`` (default: all of them).
    size_run.picked_users = (
        users if arguments.active_users is None else min(arguments.active_users, users)
    )
    size_dir = workdir / name
    size_dir.mkdir(parents=True)
    tag = f"r{time.time_ns():x}"
    with prepared_databases(
        seed.path, size_dir, arguments.databases, arguments.postgres_url, tag
    ) as databases:
        with started_servers(
            name,
            variants(arguments.databases, arguments.workers),
            databases.urls,
            arguments.threads,
            size_dir,
            tag,
        ) as servers:
            print(
                f"   servers ready ({', '.join(v.label for v in servers.services)}, bare;"
                f" threads={arguments.threads})",
                flush=True,
            )
            size_run.measurements.extend(
                measure_rounds(
                    name,
                    servers,
                    databases,
                    repeat=arguments.repeat,
                    duration=arguments.duration,
                    warmup=arguments.warmup,
                    users=size_run.picked_users,
                    tag=tag,
                )
            )
            servers.check_alive()
        databases.check_ledgers()
    fill_ratios(size_run)
    return size_run


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


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
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
    return arguments


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
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
