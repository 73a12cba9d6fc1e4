"""The targets a run is held to, and each one checked against its measurements: PASS or MISS."""

from bench.measurements import Measurement, SizeRun

# The hot path's cost: throughput at 32 connections as a fraction of bare, p99 at 1 connection.
RATIO_TARGETS = {"check_budget": 0.75, "check_reserve": 0.5, "log_usage": 0.4}
P99_TARGETS_MS = {"check_budget": 1.0, "log_usage": 2.0}
LARGE_OVER_SMALL_MIN = 0.9
# Scaling: check-budget req/s at 32 connections, PostgreSQL over SQLite and 2 workers over 1.
POSTGRES_OVER_SQLITE_MIN = 0.5
WORKERS_2_OVER_1_MIN = 1.4

Key = tuple[str, str, int]  # (scenario, variant, connections)


def evaluate_targets(runs: list[SizeRun]) -> list[dict]:
    checks: list[dict] = []
    for run in runs:
        by_key = _by_key(run)
        checks += _bare_checks(run, by_key)
        checks += _variant_checks(run, by_key)
    small = next((run for run in runs if run.name == "small"), None)
    large = next((run for run in runs if run.name == "large"), None)
    if small is not None and large is not None:
        checks += _large_over_small_checks(small, large)
    return checks


def _by_key(run: SizeRun) -> dict[Key, Measurement]:
    return {(m.scenario, m.variant, m.connections): m for m in run.measurements}


def _bare_checks(run: SizeRun, by_key: dict[Key, Measurement]) -> list[dict]:
    """Each scenario against bare at 32 connections, and its p99 at 1 connection."""
    checks = []
    single = sorted({m.variant for m in run.measurements if m.variant.endswith(" ×1")})
    for variant in single:  # one server process against one bare process
        for scenario, minimum in RATIO_TARGETS.items():
            measured = by_key[(scenario, variant, 32)].ratio_to_bare
            checks.append(
                {
                    "size": f"{run.name} {variant}",
                    "target": f"{scenario} req/s at 32 conn ≥ {minimum}× bare",
                    "measured": f"{measured:.3f}×",
                    "pass": measured >= minimum,
                }
            )
        for scenario, maximum in P99_TARGETS_MS.items():
            measured = by_key[(scenario, variant, 1)].p99_ms
            checks.append(
                {
                    "size": f"{run.name} {variant}",
                    "target": f"{scenario} p99 at 1 conn ≤ {maximum:g} ms",
                    "measured": f"{measured:.2f} ms",
                    "pass": measured <= maximum,
                }
            )
    return checks


def _variant_checks(run: SizeRun, by_key: dict[Key, Measurement]) -> list[dict]:
    """Check-budget at 32 connections, PostgreSQL vs SQLite, 2 workers vs 1."""
    checks = []
    labels = {m.variant for m in run.measurements if m.variant}
    pairs = [(f"postgres ×{w}", f"sqlite ×{w}", POSTGRES_OVER_SQLITE_MIN) for w in (1, 2, 4, 8)] + [
        (f"{db} ×2", f"{db} ×1", WORKERS_2_OVER_1_MIN) for db in ("sqlite", "postgres")
    ]
    for measured_label, reference_label, minimum in pairs:
        if measured_label in labels and reference_label in labels:
            ratio = (
                by_key[("check_budget", measured_label, 32)].requests_per_sec
                / by_key[("check_budget", reference_label, 32)].requests_per_sec
            )
            checks.append(
                {
                    "size": run.name,
                    "target": f"check_budget req/s at 32 conn, {measured_label}"
                    f" ≥ {minimum}× {reference_label}",
                    "measured": f"{ratio:.3f}×",
                    "pass": ratio >= minimum,
                }
            )
    return checks


def _large_over_small_checks(small: SizeRun, large: SizeRun) -> list[dict]:
    """Each service figure on the large database against the same figure on the small one."""
    checks = []
    small_by = _by_key(small)
    for m in large.measurements:
        s = small_by.get((m.scenario, m.variant, m.connections))
        if m.scenario == "bare" or s is None:
            continue
        for figure, ratio in (
            ("req/s", m.requests_per_sec / s.requests_per_sec),
            ("p50", s.p50_ms / m.p50_ms),  # latency: large may be at most small / 0.9
            ("p99", s.p99_ms / m.p99_ms),
        ):
            checks.append(
                {
                    "size": f"large vs small {m.variant}",
                    "target": f"{m.scenario} {figure} at {m.connections} conn"
                    f" ≥ {LARGE_OVER_SMALL_MIN}× small",
                    "measured": f"{ratio:.3f}×",
                    "pass": ratio >= LARGE_OVER_SMALL_MIN,
                }
            )
    return checks
