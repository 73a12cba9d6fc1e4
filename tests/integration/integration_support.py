"""Integration helpers: real `billing serve` processes, JSON with exact money, raw DB reads.

A server's database is a SQLite file (a ``Path``) or a PostgreSQL URL (a ``str``).
"""

import json
import os
import resource
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import httpx
import simplejson
from pg_testing import PgRaw
from ports import free_port

from core.settings import Settings

API_KEY = "integration-api-key-0123456789"
ADMIN_KEY = "integration-admin-key-0123456789"
PASSWORD = "correct horse battery"
READY_WAIT_SECONDS = 20.0
STOP_WAIT_SECONDS = 10.0
# How long a one-shot `billing` command (migrate, backup, …) may take before it counts as hung.
BILLING_COMMAND_SECONDS_MAX = 20.0
NANOS_PER_DOLLAR = 10**9
# Connections per PostgreSQL server process: enough for its threads, few enough that several
# servers fit in the shared server's max_connections.
POSTGRES_POOL_SIZE = 8

# Variables the server reads (every Settings field); scrubbed from the inherited environment so
# only ours count.
_SERVER_VARIABLES = tuple(name.upper() for name in Settings.model_fields)


def billing_command(*arguments: str) -> list[str]:
    """The `billing` command of the code under test (the real server, no shell): its module run
    by this interpreter, since a console script installed beside it may be bound to another
    checkout. tests/deploy holds the console script to the same function."""
    return [sys.executable, "-m", "service.cli", *arguments]


Database = Path | str


def run_billing(
    command: str, env: dict[str, str], cwd: Path, *arguments: str
) -> subprocess.CompletedProcess[str]:
    """Run `billing <command> [arguments]` to completion, bounded; a hang is a failure, not a
    stuck suite."""
    process = subprocess.Popen(
        billing_command(command, *arguments),
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=BILLING_COMMAND_SECONDS_MAX)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate(timeout=BILLING_COMMAND_SECONDS_MAX)
        raise AssertionError(f"billing {command} did not finish:\n{stdout}\n{stderr}") from None
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def database_url(database: Database) -> str:
    """A PostgreSQL URL as it is; a SQLite path in SQLAlchemy's absolute form sqlite:////abs.db."""
    if isinstance(database, str):
        return database
    assert database.is_absolute()
    return f"sqlite:///{database}"


def server_env(**overrides: str | None) -> dict[str, str]:
    """The inherited environment without the server's variables, plus ``overrides`` (None drops)."""
    env = {
        name: value for name, value in os.environ.items() if name.upper() not in _SERVER_VARIABLES
    }
    env["PYTHONUNBUFFERED"] = "1"
    for name, value in overrides.items():
        if value is not None:
            env[name] = value
    return env


def dumps(body: object) -> bytes:
    """JSON with Decimals as exact JSON numbers."""
    return simplejson.dumps(body, use_decimal=True).encode()


def loads(response: httpx.Response) -> dict:
    """A response body with every number that has a fraction as an exact Decimal."""
    return json.loads(response.text, parse_float=Decimal)


def dollars(nanos: int) -> Decimal:
    return Decimal(nanos) / NANOS_PER_DOLLAR


class BillingServer:
    """One `billing serve` process on 127.0.0.1:<free port>, its output captured to files."""

    def __init__(
        self,
        workdir: Path,
        database: Database,
        name: str = "server",
        *,
        keys: bool = True,
        threads: int | None = None,
        workers: int = 1,
        data_dir: Path | None = None,
        extra_env: dict[str, str] | None = None,
        port: int | None = None,
        file_bytes_max: int | None = None,
    ) -> None:
        """``file_bytes_max``: no file the server writes may grow past it (``RLIMIT_FSIZE``,
        which Python answers with ``EFBIG``): a disk that fills up, without a filesystem."""
        self.workdir = workdir
        self.database = database
        self.name = name
        self.port = free_port() if port is None else port
        self.base_url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = workdir / f"{name}-data" if data_dir is None else data_dir
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        env = server_env(
            PORT=str(self.port),
            HOST="127.0.0.1",
            DATA_DIR=str(self.data_dir),
            DATABASE_URL=database_url(database),
            DATABASE_POOL_SIZE=None if isinstance(database, Path) else str(POSTGRES_POOL_SIZE),
            BILLING_API_KEY=API_KEY if keys else None,
            ADMIN_SECRET_KEY=ADMIN_KEY if keys else None,
            THREADS=None if threads is None else str(threads),
            RESERVATION_TTL_SECONDS="3600",
        )
        env.update(extra_env or {})
        self._stdout = open(self.stdout_path, "wb")  # noqa: SIM115 - closed in stop()
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115
        # No shell: the Popen pid is the server process itself, so a signal reaches it.
        self.process = subprocess.Popen(
            billing_command("serve", "--workers", str(workers)),
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=self._stderr,
            preexec_fn=None if file_bytes_max is None else _file_size_limit(file_bytes_max),
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def lift_file_size_limit(self) -> None:
        """Room on the disk again: the server and its workers may write files of any size."""
        for pid in {self.pid} | children_of(self.pid):
            _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard, hard))

    def output(self) -> str:
        """Everything the process wrote so far, stdout then stderr."""
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(
            errors="replace"
        )

    def wait_ready(self, timeout: float = READY_WAIT_SECONDS) -> None:
        """Poll GET / until 200; fail with the server's output if it exits or never answers."""
        deadline = time.monotonic() + timeout
        last_error: object = None
        with httpx.Client(base_url=self.base_url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise AssertionError(
                        f"{self.name} exited with {self.process.returncode} before it was ready:\n"
                        + self.output()
                    )
                try:
                    response = client.get("/")
                    if response.status_code == 200:
                        return
                    last_error = f"GET / answered {response.status_code}: {response.text}"
                except httpx.TransportError as error:
                    last_error = error
                time.sleep(0.05)
        self.stop()
        raise AssertionError(
            f"{self.name} not ready within {timeout} s (last: {last_error}):\n" + self.output()
        )

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout)

    def stop(self) -> None:
        """Terminate, then kill after a bounded wait; close the output files."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_WAIT_SECONDS)
        for handle in (self._stdout, self._stderr):
            if not handle.closed:
                handle.close()


@contextmanager
def serving(server: BillingServer) -> Iterator[httpx.Client]:
    """A client of ``server`` once it is ready; the server stops when the block ends."""
    try:
        server.wait_ready()
        with server.client() as client:
            yield client
    finally:
        server.stop()


def _file_size_limit(file_bytes_max: int) -> Callable[[], None]:
    def limit() -> None:
        # The soft limit only, so the test can lift it again (``lift_file_size_limit``).
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes_max, hard))

    return limit


def children_of(pid: int) -> set[int]:
    """Live (not zombie) processes whose parent is ``pid``, from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def admin_headers(key: str = ADMIN_KEY) -> dict[str, str]:
    return {"X-Admin-Key": key, "Content-Type": "application/json"}


def api_headers(key: str = API_KEY) -> dict[str, str]:
    return {"X-API-Key": key, "Content-Type": "application/json"}


def create_product(client: httpx.Client, product_id: str, budget: Decimal | int) -> dict:
    response = client.post(
        "/api/admin/products",
        content=dumps({"id": product_id, "name": product_id.title(), "monthly_budget": budget}),
        headers=admin_headers(),
    )
    assert response.status_code == 201, response.text
    return loads(response)


def provision_user(client: httpx.Client, user_id: str, product_id: str, tenant_id: str) -> dict:
    response = client.post(
        "/api/admin/provision-user",
        content=dumps(
            {
                "email": f"{user_id}@example.test",
                "password": PASSWORD,
                "product_id": product_id,
                "tenant_id": tenant_id,
                "user_id": user_id,
            }
        ),
        headers=admin_headers(),
    )
    assert response.status_code == 201, response.text
    return loads(response)


def log_usage(client: httpx.Client, user_id: str, request_id: str, cost: Decimal | int) -> None:
    """POST log-usage for a new request id, insisting it is recorded (201)."""
    body = dumps(usage_body(user_id, request_id, cost))
    answer = client.post("/api/log-usage", content=body, headers=api_headers())
    assert answer.status_code == 201, answer.text


def usage_body(user_id: str, request_id: str, cost: Decimal | int, model: str = "gpt-4o") -> dict:
    return {
        "user_id": user_id,
        "model": model,
        "request_id": request_id,
        "tokens_input": 10,
        "tokens_output": 20,
        "cost_total": cost,
    }


def hold_then_log(client: httpx.Client, user_id: str, request_id: str, denied_status: str) -> bool:
    """One gateway cycle: a $1 hold, then the $1 log when the hold was placed (True).

    A refused hold must carry ``denied_status`` and no reservation (False).
    """
    check = client.post(
        "/api/check-budget",
        content=dumps(
            {"user_id": user_id, "model": "gpt-4o", "cost_estimate": 1, "request_id": request_id}
        ),
        headers=api_headers(),
    )
    assert check.status_code == 200, check.text
    checked = loads(check)
    if not checked["allowed"]:
        assert checked["status"] == denied_status, checked
        assert "reservation" not in checked
        return False
    assert checked["reservation"]["amount"] == 1
    logged = client.post(
        "/api/log-usage", content=dumps(usage_body(user_id, request_id, 1)), headers=api_headers()
    )
    assert logged.status_code == 201, logged.text
    assert loads(logged)["result"] == "created"
    return True


def user_budget(client: httpx.Client, user_id: str) -> dict:
    response = client.get(f"/api/users/{user_id}/budget", headers=api_headers())
    assert response.status_code == 200, response.text
    return loads(response)["budget"]


@contextmanager
def read_only(database: Database) -> Iterator[sqlite3.Connection | PgRaw]:
    """A connection to the server's database that sees every committed write: read-only on a
    SQLite file (WAL); on PostgreSQL it takes ``?`` parameters like sqlite3."""
    if isinstance(database, str):
        connection: sqlite3.Connection | PgRaw = PgRaw(database)
    else:
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        yield connection
    finally:
        connection.close()
