"""The rounds of one database size: every scenario at every load on every server, interleaved."""

from dataclasses import dataclass

from bench.databases import Databases
from bench.load import in_app_latency, run_wrk
from bench.machine import (
    BUSY_FRACTION_MAX,
    CpuMeter,
    cpu_seconds,
    processes_named,
    with_descendants,
)
from bench.measurements import Measurement, Sample
from bench.processes import Process, Servers
from bench.scenarios import LOADS, SCENARIOS, Scenario, Variant


@dataclass(frozen=True)
class Target:
    """A scenario on one server, and the processes whose CPU its requests cost."""

    scenario: Scenario
    variant: Variant | None  # None: the bare app
    process: Process
    cost_pids: tuple[int, ...]

    @property
    def label(self) -> str:
        return "" if self.variant is None else self.variant.label


def measure_rounds(
    size: str,
    servers: Servers,
    databases: Databases,
    *,
    repeat: int,
    duration: int,
    warmup: int,
    users: int,
    tag: str,
) -> list[Measurement]:
    """``repeat`` rounds, each a warm-up and a measured wrk run of every target at every load."""
    postgres = "postgres" in databases.urls
    targets = _targets(servers, postgres)
    measurements = {
        (target, connections): Measurement(
            size, target.scenario.name, target.label, connections, wrk_threads, duration
        )
        for connections, wrk_threads in LOADS
        for target in targets
    }
    server_pids = tuple(process.popen.pid for process in servers.all())
    # Rounds interleave the scenarios, so a slow spell of the machine hits bare and service
    # alike instead of one scenario's every run.
    for round_index in range(repeat):
        for connections, wrk_threads in LOADS:
            for target in targets:
                server = target.label.replace(" ×", "w") or "bare"
                run_tag = f"{tag}-{round_index}-{target.scenario.name}-{server}-c{connections}"
                if target.variant is not None:
                    databases.before_run(target.variant.database)
                if warmup > 0:
                    run_wrk(
                        target.scenario,
                        target.process.base_url,
                        connections,
                        wrk_threads,
                        warmup,
                        users,
                        run_tag + "-warm",
                    )
                sample = _measured_sample(
                    target,
                    connections,
                    wrk_threads,
                    duration,
                    users,
                    run_tag,
                    server_pids,
                    postgres,
                )
                measurements[(target, connections)].samples.append(sample)
                print(_sample_line(round_index, repeat, target, connections, sample), flush=True)
    return list(measurements.values())


def _targets(servers: Servers, postgres: bool) -> list[Target]:
    # The processes whose CPU a request of each server costs: it, its workers and, on
    # PostgreSQL, the database's own server processes.
    postgres_pids = processes_named("postgres") if postgres else ()
    bare_pids = with_descendants((servers.bare.popen.pid,))
    service_pids = {
        variant: with_descendants((service.popen.pid,))
        + (postgres_pids if variant.database == "postgres" else ())
        for variant, service in servers.services.items()
    }
    targets: list[Target] = []
    for scenario in SCENARIOS:
        if scenario.target == "bare":
            targets.append(Target(scenario, None, servers.bare, bare_pids))
        else:
            targets.extend(
                Target(scenario, variant, service, service_pids[variant])
                for variant, service in servers.services.items()
            )
    return targets


def _measured_sample(
    target: Target,
    connections: int,
    wrk_threads: int,
    seconds: int,
    users: int,
    tag: str,
    server_pids: tuple[int, ...],
    postgres: bool,
) -> Sample:
    """One measured wrk run: wrk's figures, the CPU the server spent, the service's own log."""
    log_offset = target.process.log_path.stat().st_size
    meter = CpuMeter(server_pids, postgres=postgres)
    cpu_seconds_before = cpu_seconds(target.cost_pids)
    result = run_wrk(
        target.scenario, target.process.base_url, connections, wrk_threads, seconds, users, tag
    )
    cpu_used_seconds = cpu_seconds(target.cost_pids) - cpu_seconds_before
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
        in_app_latency(target.process.log_path, log_offset, target.scenario.path)
        if target.variant is not None
        else None
    )
    if in_app is not None:
        sample.app_p50_ms, sample.app_p99_ms = in_app
    return sample


def _sample_line(
    round_index: int, repeat: int, target: Target, connections: int, sample: Sample
) -> str:
    note = ""
    if sample.foreign_cpu > BUSY_FRACTION_MAX:
        note = f"  WARNING: other processes used {sample.foreign_cpu:.0%} of the CPUs"
    in_app_note = (
        ""
        if sample.app_p99_ms is None
        else f"  (in app p50 {sample.app_p50_ms:.2f}, p99 {sample.app_p99_ms:.2f})"
    )
    return (
        f"   [{round_index + 1}/{repeat}] {target.scenario.label:<27}"
        f" {target.label:<11} c={connections:<3} {sample.requests_per_sec:>8,.0f} req/s"
        f"  p50 {sample.p50_ms:6.2f} ms  p99 {sample.p99_ms:6.2f} ms"
        f"  CPU {sample.cpu_us_per_request:4.0f} µs/req{in_app_note}{note}"
    )
