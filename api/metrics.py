"""Prometheus metrics: what the service counts, and ``GET /metrics`` to read them.

With several workers (``billing serve``) every process writes its samples to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode, chosen when the library is
imported) and a scrape adds them up; otherwise the metrics live in one private registry.
"""

import hmac
import logging
import os
import time
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

from api.http import ApiError
from core.budget import BudgetStatus
from core.ledger import Ledger

log = logging.getLogger(__name__)

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS_SECONDS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
UNROUTED = "unrouted"
NOT_FOUND_REASON = "not_found"
LOG_USAGE_RESULTS = ("created", "exists", "conflict")
RATE_LIMIT_SCOPES = ("key", "user")
_KNOWN_METHODS = frozenset(falcon.COMBINED_METHODS)


class Metrics:
    """The service's metrics; one per process. Label values come from small fixed sets only."""

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

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        if method not in _KNOWN_METHODS:
            method = "OTHER"
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self._requests.labels(method, route, str(status)),
                self._latency.labels(method, route),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def budget_decision(self, reason: str) -> None:
        """One check-budget answer: ``active`` is allowed, any other status a denial."""
        self._decision_children[reason].inc()

    def log_usage_result(self, result: str) -> None:
        self._log_usage_children[result].inc()

    def rate_limit_rejection(self, scope: str) -> None:
        self._rejection_children[scope].inc()

    def redis_failure(self) -> None:
        self._redis_failures.inc()

    def exposition(self, ledger: Ledger) -> bytes:
        """The text format of every metric, with the open holds read from the store now."""
        registry = CollectorRegistry()
        if self.registry is not None:
            registry.register(self.registry)
        else:
            MultiProcessCollector(registry, path=str(self.multiprocess_dir))
        registry.register(_OpenHolds(ledger))
        return generate_latest(registry)


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


def multiprocess_dir_from_environment() -> Path | None:
    value = os.environ.get(MULTIPROC_DIR_VARIABLE)
    return Path(value) if value else None


class MetricsResource:
    """``GET /metrics``: open like ``GET /`` unless ``METRICS_KEY`` is set, then Bearer only."""

    def __init__(self, metrics: Metrics, ledger: Ledger, metrics_key: str | None) -> None:
        self._metrics = metrics
        self._ledger = ledger
        self._expected = None if metrics_key is None else f"Bearer {metrics_key}".encode()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if self._expected is not None:
            provided = req.get_header("Authorization")
            if provided is None or not hmac.compare_digest(provided.encode(), self._expected):
                raise ApiError(
                    falcon.HTTP_401,
                    "unauthorized",
                    "missing or invalid Authorization: Bearer <METRICS_KEY> header",
                )
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = self._metrics.exposition(self._ledger)
