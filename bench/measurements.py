"""The figures of a run: each wrk run's sample, and the medians of a scenario's samples."""

import statistics
from dataclasses import asdict, dataclass, field


@dataclass
class Sample:
    """One measured wrk run."""

    requests: int
    requests_per_sec: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    foreign_cpu: float  # share of all cores used by processes other than the bench's own
    # The service's own request log over the run (None for the bare app): see in_app_latency.
    app_p50_ms: float | None = None
    app_p99_ms: float | None = None
    # CPU time (user + system) the server under test used per request answered, in µs.
    cpu_us_per_request: float = 0.0


@dataclass
class Measurement:
    """A scenario at a connection count: the median of its samples, figure by figure."""

    size: str
    scenario: str
    variant: str  # Variant.label, or "" for the bare reference
    connections: int
    wrk_threads: int
    duration_s: int
    samples: list[Sample] = field(default_factory=list)
    ratio_to_bare: float | None = None

    def _median(self, name: str) -> float:
        return statistics.median(getattr(sample, name) for sample in self.samples)

    @property
    def requests_per_sec(self) -> float:
        return self._median("requests_per_sec")

    @property
    def p50_ms(self) -> float:
        return self._median("p50_ms")

    @property
    def p99_ms(self) -> float:
        return self._median("p99_ms")

    @property
    def cpu_us_per_request(self) -> float:
        return self._median("cpu_us_per_request")

    def app_ms(self, name: str) -> float | None:
        """The median of an in-app figure over the samples that have it (the service's)."""
        values = [getattr(sample, name) for sample in self.samples]
        known = [value for value in values if value is not None]
        return statistics.median(known) if known else None

    def summary(self) -> dict:
        rates = [sample.requests_per_sec for sample in self.samples]
        return {
            "size": self.size,
            "scenario": self.scenario,
            "variant": self.variant,
            "connections": self.connections,
            "wrk_threads": self.wrk_threads,
            "duration_s": self.duration_s,
            "requests_per_sec": round(self.requests_per_sec, 1),
            "requests_per_sec_min": round(min(rates), 1),
            "requests_per_sec_max": round(max(rates), 1),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "app_p50_ms": _rounded(self.app_ms("app_p50_ms")),
            "app_p99_ms": _rounded(self.app_ms("app_p99_ms")),
            "cpu_us_per_request": round(self.cpu_us_per_request, 1),
            "ratio_to_bare": None if self.ratio_to_bare is None else round(self.ratio_to_bare, 3),
            "samples": [asdict(sample) for sample in self.samples],
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@dataclass
class SizeRun:
    """One database size: how its seed was had, and what was measured on it."""

    name: str
    users: int
    usage_rows: int
    seed_seconds: float
    seed_cached: bool
    cpu_busy_before: float
    measurements: list[Measurement] = field(default_factory=list)
    picked_users: int = 0


def fill_ratios(size_run: SizeRun) -> None:
    """Each measurement's req/s over the bare app's at the same connection count."""
    bare = {m.connections: m for m in size_run.measurements if m.scenario == "bare"}
    for measurement in size_run.measurements:
        reference = bare[measurement.connections].requests_per_sec
        measurement.ratio_to_bare = measurement.requests_per_sec / reference
