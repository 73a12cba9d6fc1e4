"""The servers under test: ``billing serve`` and the bare app, started, checked and stopped."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import BENCH_DIR, RESULTS_DIR, BenchFailure
from bench.scenarios import ADMIN_KEY, API_KEY, Variant
from core.settings import Settings

READY_WAIT_SECONDS = 60.0
STOP_WAIT_SECONDS = 15.0

# Variables the server reads (every Settings field); scrubbed from the inherited environment so
# only ours count.
_SERVER_VARIABLES = tuple(name.upper() for name in Settings.model_fields)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def billing_command() -> list[str]:
    beside = Path(sys.executable).parent / "billing"
    if beside.exists():
        return [str(beside), "serve"]
    return [sys.executable, "-m", "service.cli", "serve"]


def server_env(
    port: int, threads: int, data_dir: Path, database_url: str | None, workers: int = 1
) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in _SERVER_VARIABLES}
    env.update(
        PORT=str(port),
        HOST="127.0.0.1",
        THREADS=str(threads),
        BILLING_API_KEY=API_KEY,
        ADMIN_SECRET_KEY=ADMIN_KEY,
        DATA_DIR=str(data_dir),
        WORKERS=str(workers),
        PYTHONUNBUFFERED="1",
    )
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return env


class Process:
    """A server subprocess with its log file; ``stop`` is safe to call more than once."""

    def __init__(
        self, name: str, command: list[str], env: dict[str, str], log_path: Path, port: int
    ) -> None:
        self.name = name
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(
            command,
            env=env,
            cwd=BENCH_DIR.parent,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, path: str) -> None:
        deadline = time.monotonic() + READY_WAIT_SECONDS
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise BenchFailure(
                    f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.base_url + path, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise BenchFailure(
            f"{self.name} not ready after {READY_WAIT_SECONDS:.0f} s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        try:
            if self.popen.poll() is None:
                self.popen.send_signal(signal.SIGINT)
                try:
                    self.popen.wait(STOP_WAIT_SECONDS)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait(STOP_WAIT_SECONDS)
        finally:
            self._log.close()

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        text = self.log_path.read_text("utf-8", errors="replace").splitlines()
        return "\n".join(text[-lines:])


def post_json(url: str, body: dict) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "X-API-Key": API_KEY},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def smoke_test(service: Process, bare: Process, tag: str) -> None:
    """One request of each kind, so a wrong key or body fails with its answer, not a count."""
    calls = [
        (bare.base_url + "/bare", {"user_id": "bench-u0"}, 200),
        (
            service.base_url + "/api/check-budget",
            {
                "user_id": "bench-u0",
                "model": "gpt-4o",
                "tokens_input": 100,
                "tokens_output": 100,
                "cost_estimate": 0.001,
            },
            200,
        ),
        (
            service.base_url + "/api/check-budget",
            {
                "user_id": "bench-u0",
                "model": "gpt-4o",
                "tokens_input": 100,
                "tokens_output": 100,
                "cost_estimate": 0.001,
                "request_id": f"{tag}-smoke-reserve",
            },
            200,
        ),
        (
            service.base_url + "/api/log-usage",
            {
                "user_id": "bench-u0",
                "model": "gpt-4o",
                "request_id": f"{tag}-smoke-log",
                "tokens_input": 100,
                "tokens_output": 100,
                "cost_total": 0.001,
                "response_time": 850,
            },
            201,
        ),
    ]
    for url, body, expected in calls:
        status, answer = post_json(url, body)
        if status != expected:
            raise BenchFailure(
                f"smoke test: POST {url} → {status} (expected {expected}): {answer!r}"
            )
    status, answer = post_json(
        service.base_url + "/api/check-budget", {"user_id": "bench-u0", "cost_estimate": 0.001}
    )
    if status != 200 or not json.loads(answer)["allowed"]:
        raise BenchFailure(f"smoke test: bench-u0 has no room: {answer!r}")


@dataclass(frozen=True)
class Servers:
    """The servers of one database size: a ``billing serve`` per variant, and the bare app."""

    bare: Process
    services: dict[Variant, Process]

    def all(self) -> tuple[Process, ...]:
        return (self.bare, *self.services.values())

    def check_alive(self) -> None:
        for process in self.all():
            if process.popen.poll() is not None:
                raise BenchFailure(f"{process.name} died during the run:\n{process.log_tail()}")


@contextmanager
def started_servers(
    size: str,
    variants: list[Variant],
    database_urls: dict[str, str],
    threads: int,
    size_dir: Path,
    tag: str,
) -> Iterator[Servers]:
    """Every server started, ready and smoke-tested; all of them stopped on the way out."""
    services: dict[Variant, Process] = {}
    bare = None
    try:
        for variant in variants:
            port = free_port()
            services[variant] = Process(
                f"billing serve ({variant.label})",
                billing_command(),
                server_env(
                    port,
                    threads,
                    size_dir / "data",
                    database_urls[variant.database],
                    variant.workers,
                ),
                RESULTS_DIR / f"server-{size}-{variant.database}-{variant.workers}.log",
                port,
            )
        bare_port = free_port()
        bare = Process(
            "bare app",
            [sys.executable, "-m", "bench.bare_app"],
            server_env(bare_port, threads, size_dir / "data-bare", None),
            RESULTS_DIR / f"bare-{size}.log",
            bare_port,
        )
        bare.wait_ready("/")
        for variant, service in services.items():
            service.wait_ready("/")
            smoke_test(service, bare, f"{tag}-{variant.database}-{variant.workers}")
        yield Servers(bare, services)
    finally:
        for process in (bare, *services.values()):
            if process is not None:
                process.stop()
