"""The benchmark: ``python -m bench.run`` drives the real server and a bare app with wrk."""

from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"


class BenchFailure(RuntimeError):
    """The run cannot be trusted (a server did not start, wrk saw errors, …)."""
