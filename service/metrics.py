"""A worker's multiprocess metrics: the directory the supervisor shares, and a flush thread."""

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from api.metrics import Metrics

# prometheus-client reads it when it is imported, and then writes every sample to files in it.
MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# How often a worker adds what it counted to the files a scrape reads. A scrape adds the
# answering process's own counts first; another worker's may be this late.
METRICS_FLUSH_INTERVAL_SECONDS = 1.0
METRICS_STOP_WAIT_SECONDS = 5.0


def multiprocess_dir_from_environment() -> Path | None:
    value = os.environ.get(MULTIPROC_DIR_VARIABLE)
    return Path(value) if value else None


@contextmanager
def worker_metrics() -> Iterator[Metrics]:
    """This process's ``Metrics``: in multiprocess mode (a directory in the environment)
    flushed every ``METRICS_FLUSH_INTERVAL_SECONDS`` by a thread; flushed once more at the end,
    so a worker's last counts count."""
    multiprocess_dir = multiprocess_dir_from_environment()
    metrics = Metrics(multiprocess_dir)
    flusher = None if multiprocess_dir is None else _Flusher(metrics)
    try:
        yield metrics
    finally:
        if flusher is not None:
            flusher.stop()
        metrics.flush()


class _Flusher:
    """A thread that flushes ``metrics`` every ``METRICS_FLUSH_INTERVAL_SECONDS`` until stopped."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-flush", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(METRICS_FLUSH_INTERVAL_SECONDS):
            self._metrics.flush()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(METRICS_STOP_WAIT_SECONDS)
