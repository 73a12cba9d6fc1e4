"""Build the databases the benchmark runs against: the real schema, a plan, tenants, users, usage.

    python -m bench.seed --users 1000000 --usage-rows 10000000   # the large variant
    python -m bench.seed --users 1000 --usage-rows 0             # the small one

The schema comes from the service itself (opening ``SqliteStore`` applies the migrations); the
rows are then written straight into the file with ``INSERT … SELECT`` over a recursive CTE,
in a few large transactions, with journaling and syncing off — this is a scratch file built
aside and renamed into place only when it is complete, so a crash leaves nothing behind.
Databases are cached under ``bench/results/seed/`` by size and seed version; the runner copies
the cached file before each run, so runs never grow it.

What is in it (every row satisfies the schema's CHECKs and the ledger's counter invariants):
- one plan ``bench-plan`` with the largest budget an amount may have (1,000,000,000 dollars);
- tenants ``bench-t<k>`` (one per 1,000 users), each with that same cap, so every check
  evaluates the tenant rule too;
- users ``bench-u<n>`` for n in [0, users), all active, in the current month's open period;
- ``usage-rows`` usage rows, request ids ``seed-<n>`` in time order over the open period,
  spread round-robin over the users, costs between 0.000001 and 0.001 dollars;
- ``users.used`` and ``tenants.used`` set from those rows at the end (``held`` stays 0: no holds).
"""

import argparse
import hashlib
import sqlite3
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from zoneinfo import ZoneInfo

from core.ledger import wall_clock_ms
from core.periods import label_at, label_bounds_ms
from core.store.sqlite import SqliteStore

SEED_VERSION = 1
DEFAULT_CACHE_DIR = Path(__file__).resolve().parent / "results" / "seed"

PRODUCT_ID = "bench-plan"
NANOS_PER_DOLLAR = 10**9
BUDGET_MAX_NANOS = 1_000_000_000 * NANOS_PER_DOLLAR  # the largest amount the API accepts
USERS_PER_TENANT = 1_000
CHUNK_ROWS = 1_000_000
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet-20241022", "gemini-1.5-pro")
# These users never log in: a fixed placeholder instead of a real scrypt hash (hashing a million
# passwords at scrypt's cost would take hours and prove nothing about the hot path).
PASSWORD_HASH_PLACEHOLDER = "bench-placeholder-not-a-password-hash"
# The seed uses the service's default budget time zone, as the runner's servers do.
ZONE = ZoneInfo("UTC")


@dataclass(frozen=True)
class SeedResult:
    path: Path
    users: int
    usage_rows: int
    seconds: float
    cached: bool


def user_id(n: int) -> str:
    return f"bench-u{n}"


def schema_digest() -> str:
    """A short digest of the migrations, so a cached seed of an older schema is never reused."""
    folder = resources.files("core.store").joinpath("sqlite_migrations")
    digest = hashlib.sha256()
    for name in sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".sql")):
        digest.update(folder.joinpath(name).read_bytes())
    return digest.hexdigest()[:12]


def cache_path(users: int, usage_rows: int, cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    return cache_dir / f"seed-v{SEED_VERSION}-{schema_digest()}-u{users}-r{usage_rows}.db"


def seeded_database(
    users: int, usage_rows: int, cache_dir: Path = DEFAULT_CACHE_DIR, force: bool = False
) -> SeedResult:
    """The cached database of this size, built first if it is missing (or ``force``)."""
    path = cache_path(users, usage_rows, cache_dir)
    if path.exists() and not force:
        return SeedResult(path, users, usage_rows, 0.0, True)
    started = time.monotonic()
    build(path, users, usage_rows)
    return SeedResult(path, users, usage_rows, time.monotonic() - started, False)


def build(path: Path, users: int, usage_rows: int) -> None:
    """Write the database to a scratch file next to ``path`` and rename it into place."""
    assert users >= 1 and usage_rows >= 0
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(path.name + ".building")
    for leftover in (scratch, Path(f"{scratch}-wal"), Path(f"{scratch}-shm")):
        leftover.unlink(missing_ok=True)

    # The schema, exactly as the service creates it.
    SqliteStore(scratch, wall_clock_ms).close()

    now_ms = wall_clock_ms()
    label = label_at(now_ms, ZONE)
    period_start_ms = label_bounds_ms(label, ZONE)[0]
    connection = sqlite3.connect(scratch, isolation_level=None)
    try:
        _fill(connection, users, usage_rows, label, period_start_ms, now_ms)
        # Leave it as the service expects to find it: in WAL mode.
        assert connection.execute("PRAGMA journal_mode=WAL").fetchall()[0][0] == "wal"
        _verify(connection, users, usage_rows)
    finally:
        connection.close()
    Path(f"{scratch}-wal").unlink(missing_ok=True)
    Path(f"{scratch}-shm").unlink(missing_ok=True)
    scratch.replace(path)


def _fill(
    connection: sqlite3.Connection,
    users: int,
    usage_rows: int,
    label: str,
    period_start_ms: int,
    now_ms: int,
) -> None:
    connection.execute("PRAGMA journal_mode=OFF").fetchall()
    connection.execute("PRAGMA synchronous=OFF")
    connection.execute("PRAGMA cache_size=-1048576")  # 1 GiB while building
    connection.execute("PRAGMA temp_store=MEMORY")
    tenants = (users + USERS_PER_TENANT - 1) // USERS_PER_TENANT

    connection.execute("BEGIN")
    connection.execute(
        "INSERT INTO products (id, name, monthly_budget, created_at, updated_at)"
        " VALUES (?, 'Benchmark plan', ?, ?, ?)",
        (PRODUCT_ID, BUDGET_MAX_NANOS, period_start_ms, now_ms),
    )
    connection.execute(
        "WITH RECURSIVE k(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM k WHERE n + 1 < ?)"
        " INSERT INTO tenants (id, name, monthly_budget, used, held, created_at, updated_at)"
        " SELECT 'bench-t' || n, 'Benchmark tenant ' || n, ?, 0, 0, ?, ? FROM k",
        (tenants, BUDGET_MAX_NANOS, period_start_ms, now_ms),
    )
    connection.execute(
        "WITH RECURSIVE k(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM k WHERE n + 1 < ?)"
        " INSERT INTO users (id, email, email_key, password_hash, product_id, tenant_id, status,"
        " period_label, period_start, credits, used, held, created_at, updated_at)"
        " SELECT 'bench-u' || n, 'bench-u' || n || '@bench.invalid',"
        " 'bench-u' || n || '@bench.invalid', ?, ?, 'bench-t' || (n / ?), 'active',"
        " ?, ?, 0, 0, 0, ?, ? FROM k",
        (
            users,
            PASSWORD_HASH_PLACEHOLDER,
            PRODUCT_ID,
            USERS_PER_TENANT,
            label,
            period_start_ms,
            period_start_ms,
            now_ms,
        ),
    )
    connection.execute("COMMIT")
    _progress(f"{users:,} users in {tenants:,} tenants")
    if usage_rows == 0:
        return

    # The per-user index is rebuilt once at the end (a sort) instead of row by row; its
    # definition is read from the schema so the rebuilt index is the migration's own.
    index_sql = connection.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'usage_by_user_time'"
    ).fetchone()[0]
    connection.execute("DROP INDEX usage_by_user_time")
    # The usage_counts trigger moves the counters row by row; the counters are set once from
    # the aggregate below instead, and the trigger is put back from the schema's own SQL.
    trigger_sql = connection.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = 'usage_counts'"
    ).fetchone()[0]
    connection.execute("DROP TRIGGER usage_counts")
    span_ms = max(now_ms - period_start_ms, 1)
    models = " ".join(f"WHEN {i} THEN '{model}'" for i, model in enumerate(MODELS))
    started = time.monotonic()
    for low in range(0, usage_rows, CHUNK_ROWS):
        high = min(low + CHUNK_ROWS, usage_rows)
        connection.execute("BEGIN")
        # Row n: user n mod users (round-robin), created at an even step through the period,
        # request id in time order (so the primary-key index is appended to, not shuffled).
        connection.execute(
            "WITH RECURSIVE k(n) AS (SELECT :low UNION ALL SELECT n + 1 FROM k WHERE n + 1 < :high)"
            " INSERT INTO usage (request_id, user_id, tenant_id, model, tokens_input,"
            " tokens_output, cost, response_time_ms, period_start, created_at)"
            " SELECT printf('seed-%012d', n), 'bench-u' || (n % :users),"
            " 'bench-t' || ((n % :users) / :per_tenant),"
            f" CASE n % {len(MODELS)} {models} END,"
            " 50 + n % 2000, 20 + n % 800, (1 + n % 1000) * 1000, 200 + n % 5000,"
            " :period_start, :period_start + (n * :span / :rows) FROM k",
            {
                "low": low,
                "high": high,
                "users": users,
                "per_tenant": USERS_PER_TENANT,
                "period_start": period_start_ms,
                "span": span_ms,
                "rows": usage_rows,
            },
        )
        connection.execute("COMMIT")
        rate = high / max(time.monotonic() - started, 1e-9)
        _progress(f"{high:,}/{usage_rows:,} usage rows ({rate:,.0f} rows/s)")
    connection.execute(index_sql)
    connection.execute(trigger_sql)
    _progress("usage_by_user_time index rebuilt, usage_counts trigger restored")

    # The counters the ledger keeps: used = the open period's usage, per user and per tenant.
    connection.execute("BEGIN")
    connection.execute(
        "UPDATE users SET used = agg.total FROM"
        " (SELECT user_id, SUM(cost) AS total FROM usage GROUP BY user_id) AS agg"
        " WHERE users.id = agg.user_id"
    )
    connection.execute(
        "UPDATE tenants SET used = agg.total FROM"
        " (SELECT tenant_id, SUM(cost) AS total FROM usage GROUP BY tenant_id) AS agg"
        " WHERE tenants.id = agg.tenant_id"
    )
    connection.execute("COMMIT")
    _progress("used counters set from the usage rows")


def _verify(connection: sqlite3.Connection, users: int, usage_rows: int) -> None:
    """Counts and the counter invariants, checked once on the finished file."""
    (user_count,) = connection.execute("SELECT COUNT(*) FROM users").fetchall()[0]
    (usage_count, usage_sum) = connection.execute(
        "SELECT COUNT(*), COALESCE(SUM(cost), 0) FROM usage"
    ).fetchall()[0]
    (users_used,) = connection.execute("SELECT COALESCE(SUM(used), 0) FROM users").fetchall()[0]
    (tenants_used,) = connection.execute("SELECT COALESCE(SUM(used), 0) FROM tenants").fetchall()[0]
    assert user_count == users, (user_count, users)
    assert usage_count == usage_rows, (usage_count, usage_rows)
    assert users_used == usage_sum == tenants_used, (users_used, usage_sum, tenants_used)
    (problems,) = connection.execute("PRAGMA quick_check").fetchall()[0]
    assert problems == "ok", problems


def _progress(message: str) -> None:
    print(f"seed: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.seed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--usage-rows", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    arguments = parser.parse_args(argv)
    result = seeded_database(
        arguments.users, arguments.usage_rows, arguments.cache_dir, arguments.force
    )
    how = "cached" if result.cached else f"built in {result.seconds:.1f} s"
    size_mb = result.path.stat().st_size / 1e6
    print(
        f"{result.path} ({result.users:,} users, {result.usage_rows:,} usage rows,"
        f" {size_mb:,.0f} MB): {how}"
    )


if __name__ == "__main__":
    main()
