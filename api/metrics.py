"""Prometheus metrics: what the service counts, and ``GET /metrics`` to read them.

With several workers (``billing serve``) every process writes its samples to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode, chosen when the library is
imported) and a scrape adds them up; otherwise the metrics live in one private registry.
"""

import logging
import math
import threading
import time
from bisect import bisect_left
from collections.abc import Iterator
from pathlib import Path

import falcon
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from core.budget import BudgetStatus
from core.ledger import Ledger

log = logging.getLogger(__name__)

LATENCY_BUCKETS_SECONDS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
UNROUTED = "unrouted"
NOT_FOUND_REASON = "not_found"
LOG_USAGE_RESULTS = ("created", "exists", "conflict")
RATE_LIMIT_SCOPES = ("key", "user")
_KNOWN_METHODS = frozenset(falcon.COMBINED_METHODS)


class _Tally:
    """Counts taken on the request path and added to the Prometheus metrics in one go.

    prometheus-client's multiprocess values take a process-wide lock, look up the pid and write
    the mmap for every increment: the four of a check-budget cost it about 19 µs in the
    server (7% of its throughput). Here a request adds to a dict under a short lock, and
    ``flush`` makes one increment per label set. Histogram buckets are filled through the
    child's ``_sum`` and ``_buckets`` (prometheus-client has no public call to add many
    observations); ``latency_histogram`` checks their shape once, when the metric is made.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._counts: dict[Counter, int] = {}
        self._latencies: dict[Histogram, list[float]] = {}

    def count(self, counter: Counter) -> None:
        with self._lock:
            self._counts[counter] = self._counts.get(counter, 0) + 1

    def observe(self, histogram: Histogram, seconds: float) -> None:
        # Prometheus's bucket of an observation is the first bound it does not exceed.
        bucket = bisect_left(LATENCY_BUCKETS_SECONDS, seconds)
        with self._lock:
            entry = self._latencies.get(histogram)
            if entry is None:
                entry = [0.0] * (len(LATENCY_BUCKETS_SECONDS) + 2)
                self._latencies[histogram] = entry
            entry[0] += seconds
            entry[1 + bucket] += 1

    def flush(self) -> None:
        """Add every count taken so far; a flush running elsewhere finishes first, so a scrape
        that flushes sees everything counted before it."""
        with self._flush_lock:
            with self._lock:
                counts, self._counts = self._counts, {}
                latencies, self._latencies = self._latencies, {}
            for counter, count in counts.items():
                counter.inc(count)
            for histogram, (total_seconds, *buckets) in latencies.items():
                histogram._sum.inc(total_seconds)
                for value, count in zip(histogram._buckets, buckets, strict=True):
                    if count:
                        value.inc(count)


class Metrics:
    """The service's metrics; one per process. Label values come from small fixed sets only.

    Counts go through a ``_Tally``: flushed before every exposition and by ``flush``, which a
    worker's runtime calls every second in multiprocess mode (``service.metrics``).
    """

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        registry = None if multiprocess_dir is not None else CollectorRegistry()
        self.registry = registry
        self._requests = Counter(
            "billing_http_requests",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self._latency = Histogram(
            "billing_http_request_duration_seconds",
            "Time from the request reaching the app to its response, by method and route",
            ["method", "route"],
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=registry,
        )
        decisions = Counter(
            "billing_budget_decisions",
            "check-budget answers: allowed, or denied with the reason (status)",
            ["decision", "reason"],
            registry=registry,
        )
        log_usage = Counter(
            "billing_log_usage_results",
            "log-usage outcomes: created, exists (identical replay), conflict",
            ["result"],
            registry=registry,
        )
        rejections = Counter(
            "billing_rate_limit_rejections",
            "Calls refused with 429, by limit (key or user)",
            ["scope"],
            registry=registry,
        )
        self._redis_failures = Counter(
            "billing_rate_limit_redis_failures",
            "Calls decided by RATE_LIMIT_REDIS_FAILURE because Redis did not answer",
            registry=registry,
        )
        self._started = Gauge(
            "billing_worker_start_time_seconds",
            "Start time of each live worker process (label pid in multiprocess mode)",
            multiprocess_mode="liveall",
            registry=registry,
        )
        self._started.set(time.time())
        # Label children resolved once per label set: .labels() takes a lock and builds a tuple.
        # The fixed sets are resolved here, so they also show as 0 before their first event.
        reasons = [status.value for status in BudgetStatus] + [NOT_FOUND_REASON]
        self._decision_children = {
            reason: decisions.labels("allowed" if reason == "active" else "denied", reason)
            for reason in reasons
        }
        self._log_usage_children = {
            result: log_usage.labels(result) for result in LOG_USAGE_RESULTS
        }
        self._rejection_children = {scope: rejections.labels(scope) for scope in RATE_LIMIT_SCOPES}
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._tally = _Tally()

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        if method not in _KNOWN_METHODS:
            method = "OTHER"
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self._requests.labels(method, route, str(status)),
                latency_histogram(self._latency.labels(method, route)),
            )
            self._request_children[key] = children
        self._tally.count(children[0])
        self._tally.observe(children[1], seconds)

    def budget_decision(self, reason: str) -> None:
        """One check-budget answer: ``active`` is allowed, any other status a denial."""
        self._tally.count(self._decision_children[reason])

    def log_usage_result(self, result: str) -> None:
        self._tally.count(self._log_usage_children[result])

    def rate_limit_rejection(self, scope: str) -> None:
        self._tally.count(self._rejection_children[scope])

    def redis_failure(self) -> None:
        self._tally.count(self._redis_failures)

    def flush(self) -> None:
        """Add every count taken so far to the metrics a scrape reads."""
        self._tally.flush()

    def exposition(self, ledger: Ledger) -> bytes:
        """The text format of every metric, with the open holds read from the store now."""
        self._tally.flush()
        registry = CollectorRegistry()
        if self.registry is not None:
            registry.register(self.registry)
        else:
            MultiProcessCollector(registry, path=str(self.multiprocess_dir))
        registry.register(_OpenHolds(ledger))
        return generate_latest(registry)


def latency_histogram(child: Histogram) -> Histogram:
    """``child``, once checked to have the buckets ``_Tally.flush`` fills: one value per bound
    of ``LATENCY_BUCKETS_SECONDS`` and one for +Inf, and a sum."""
    bounds = [*LATENCY_BUCKETS_SECONDS, math.inf]
    assert child._upper_bounds == bounds, "prometheus-client's histogram changed shape"
    assert len(child._buckets) == len(bounds) and hasattr(child._sum, "inc")
    return child


class _OpenHolds:
    """``billing_reservations_open``: read from the store at scrape time, one index count.

    A gauge counted in each process could not see holds that expire on their own or were placed
    by another process or machine; the store knows.
    """

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def collect(self) -> Iterator[Metric]:
        try:
            count = self._ledger.open_reservations()
        except Exception as error:  # a failing store must not fail the whole scrape
            log.warning("metrics: open reservations unreadable: %s", type(error).__name__)
            return
        family = GaugeMetricFamily(
            "billing_reservations_open", "Holds open and not yet expired (from the store)"
        )
        family.add_metric([], count)
        yield family


class MetricsResource:
    """``GET /metrics``; its route's access (``Access.METRICS``) keeps it open like ``GET /``
    unless ``METRICS_KEY`` is set, then asks for ``Authorization: Bearer <METRICS_KEY>``."""

    def __init__(self, metrics: Metrics, ledger: Ledger) -> None:
        self._metrics = metrics
        self._ledger = ledger

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = self._metrics.exposition(self._ledger)
