"""The docker-compose stack, run as the README says, in real containers.

A copy of the project gets the README's `.env` (`.env.example` with the secrets filled in) and
`docker-compose up -d --build` runs with one override file, the machine's part: every service on
the host network (the only networking here), this machine's PostgreSQL and Redis on loopback
standing in for the `postgres`/`redis` images (a fresh database each run), and ports nothing
else uses. Then, in the containers: the image builds, `init` migrates and sets up PocketBase,
the API answers, the flows are deployed and a worker runs a reset to Completed, and a restarted
API container still has every write it acknowledged.

Docker is installed and started when it is missing (see ``docker_host``); when that fails the
test skips, and under ``CI`` it fails. Images and the build cache stay between runs: a warm run
rebuilds nothing.
"""

import base64
import hashlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import psycopg
import pytest
import yaml
from docker_host import DockerUnavailable, docker, ensure_base_images, ensure_engine
from pg_testing import ADMIN_URL
from psycopg import sql

ROOT = Path(__file__).resolve().parents[2]
# One project name per checkout: its images are replaced, not piled up, run after run, and two
# checkouts on one machine do not share containers.
PROJECT = "billing-stack-" + hashlib.sha256(str(ROOT).encode()).hexdigest()[:8]
# A cold build installs every dependency (about 1 min here); a warm one reuses every layer.
UP_TIMEOUT_SECONDS = 1200
HEALTHY_WAIT_SECONDS = 180
FLOW_RUN_WAIT_SECONDS = 180
COMMAND_TIMEOUT_SECONDS = 300
HTTP_TIMEOUT_SECONDS = 10
POLL_SECONDS = 1.0
SERVICES_OF_THE_IMAGE = (
    "init",
    "api",
    "flows-deploy",
    "prefect-worker",
    "prefect-server",
    "alerts-watch",
)
LONG_RUNNING = ("pocketbase", "api", "prefect-server", "prefect-worker")
USAGE_WRITES = 5
OPERATIONS = ROOT / "docs" / "operations.md"
# What the steps in docs/operations.md have an operator fill in (mail settings are optional).
README_SECRETS = (
    "POSTGRES_PASSWORD",
    "PREFECT_POSTGRES_PASSWORD",
    "PREFECT_API_AUTH_STRING",
    "POCKETBASE_ADMIN_EMAIL",
    "POCKETBASE_ADMIN_PASSWORD",
    "BILLING_API_KEY",
    "ADMIN_SECRET_KEY",
)
COST_PER_CALL = Decimal("0.1")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Stack:
    folder: Path
    override: Path
    api_url: str
    prefect_url: str
    api_key: str
    admin_key: str
    prefect_login: str

    def compose(self, *arguments: str, timeout: float = COMMAND_TIMEOUT_SECONDS, check=True):
        result = subprocess.run(
            ["docker-compose", "-f", "docker-compose.yml", "-f", str(self.override), *arguments],
            cwd=self.folder,
            env=os.environ | {"COMPOSE_PROJECT_NAME": PROJECT},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker-compose {' '.join(arguments)}: {result.stderr[-3000:]}\n{self.logs()}"
            )
        return result

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "30", check=False).stdout[-6000:]

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def state(self, service: str, field: str) -> str:
        result = docker("inspect", "--format", "{{" + field + "}}", self.container(service))
        return result.stdout.strip()

    def wait_healthy(self, services: tuple[str, ...]) -> None:
        deadline = time.monotonic() + HEALTHY_WAIT_SECONDS
        for service in services:
            while self.state(service, ".State.Health.Status") != "healthy":
                assert time.monotonic() < deadline, f"{service} is not healthy\n{self.logs()}"
                time.sleep(POLL_SECONDS)

    def prefect(self) -> httpx.Client:
        token = base64.b64encode(self.prefect_login.encode()).decode()
        return httpx.Client(
            base_url=self.prefect_url,
            headers={"Authorization": f"Basic {token}"},
            timeout=HTTP_TIMEOUT_SECONDS,
        )


def test_the_documented_steps_are_the_ones_this_test_runs() -> None:
    section = OPERATIONS.read_text().split("## Deploy with docker-compose\n", 1)[1]
    steps = section.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line for line in steps.splitlines() if not line.startswith("#")]
    assert [command.split("#")[0].strip() for command in commands][1:4] == [
        "cp .env.example .env",
        "docker compose up -d --build",
        "docker compose ps",
    ]
    to_fill = steps.split("fill in .env:", 1)[1].split("SMTP_*", 1)[0]
    assert set(re.findall(r"\b[A-Z][A-Z0-9_]{3,}\b", to_fill)) == set(README_SECRETS)


@pytest.fixture(scope="module")
def engine() -> str:
    """A running Docker engine and the stand-in base images; the stand-in's tag."""
    try:
        ensure_engine()
        return ensure_base_images(ROOT / "Dockerfile")
    except DockerUnavailable as error:
        if in_ci():
            pytest.fail(f"Docker is required in CI: {error}", pytrace=False)
        pytest.skip(f"Docker is not available: {error}")


def _readme_env(source: Path, secrets_filled: dict[str, str]) -> str:
    """``.env.example`` with the README's secrets filled in, everything else as it is."""
    lines = []
    for line in source.read_text().splitlines():
        name = line.split("=", 1)[0]
        lines.append(f"{name}={secrets_filled[name]}" if name in secrets_filled else line)
    assert set(secrets_filled) <= {line.split("=", 1)[0] for line in lines}
    return "\n".join(lines) + "\n"


def _host_override(stand_in: str, ports: dict[str, int], databases: dict[str, str]) -> dict:
    """This machine's part: host network, loopback PostgreSQL and Redis, free ports."""
    prefect_api = f"http://127.0.0.1:{ports['prefect']}/api"
    loopback = {
        "DATABASE_URL": databases["billing"],
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "POCKETBASE_URL": f"http://127.0.0.1:{ports['pocketbase']}",
        "PREFECT_API_URL": prefect_api,
    }
    services: dict[str, dict] = {}
    for name, port in (("postgres", 5432), ("prefect-postgres", 5432), ("redis", 6379)):
        probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3)"
        services[name] = {
            "image": stand_in,
            "command": ["sleep", "infinity"],
            "stop_signal": "SIGKILL",
            "healthcheck": {"test": ["CMD", "python", "-c", probe], "interval": "1s"},
        }
    for name in (*SERVICES_OF_THE_IMAGE, "pocketbase"):
        services[name] = {"build": {"network": "host"}, "environment": dict(loopback)}
    services["pocketbase"]["environment"] = {
        "POCKETBASE_HOST": "127.0.0.1",
        "POCKETBASE_PORT": str(ports["pocketbase"]),
    }
    services["api"]["environment"] |= {"HOST": "127.0.0.1", "PORT": str(ports["api"])}
    services["prefect-server"]["environment"] = {
        "PREFECT_API_DATABASE_CONNECTION_URL": databases["prefect"],
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(ports["prefect"]),
        "PREFECT_UI_API_URL": prefect_api,
    }
    # The worker asks for work every 10 s by default; 1 s keeps the wait for a run short.
    services["prefect-worker"]["environment"] |= {
        "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
        "PREFECT_WORKER_WEBSERVER_PORT": str(ports["worker"]),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    # The images' health checks poll every 10 s; the test need not wait that long for each. And
    # on a 2-core VM at load average 20 a check's Python start-up alone can pass the image's 5 s
    # timeout (the old `billing healthcheck`, which loaded the whole CLI, took 9 to 11 s there).
    for name in LONG_RUNNING:
        services[name]["healthcheck"] = {"interval": "1s", "timeout": "60s"}
    for service in services.values():
        service["network_mode"] = "host"
    return {"services": services}


def _copy_checkout(folder: Path) -> None:
    """What a fresh clone has, with this checkout's changes: files git tracks or would track."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file() or source.is_symlink():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, folder / name, follow_symlinks=False)


def _create_databases(names: list[str]) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        for name in names:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _drop_databases(names: list[str]) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        for name in names:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="module")
def stack(engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("stack") / "cloudfreedom-billing"
    _copy_checkout(folder)
    suffix = secrets.token_hex(4)
    names = {"billing": f"billing_stack_{suffix}", "prefect": f"prefect_stack_{suffix}"}
    try:
        _create_databases(list(names.values()))
    except psycopg.OperationalError as error:
        if in_ci():
            pytest.fail(f"PostgreSQL is required in CI: {error}", pytrace=False)
        pytest.skip(f"PostgreSQL not reachable: {error}")
    server = ADMIN_URL.rsplit("/", 1)[0]
    databases = {
        "billing": f"{server}/{names['billing']}",
        "prefect": f"{server.replace('postgresql://', 'postgresql+asyncpg://')}/{names['prefect']}",
    }
    filled = {name: secrets.token_urlsafe(24) for name in README_SECRETS}
    filled |= {
        "PREFECT_API_AUTH_STRING": f"admin:{secrets.token_urlsafe(24)}",
        "POCKETBASE_ADMIN_EMAIL": "admin@example.com",
    }
    (folder / ".env").write_text(_readme_env(folder / ".env.example", filled))
    ports = {name: free_port() for name in ("api", "pocketbase", "prefect", "worker")}
    override = _host_override(engine, ports, databases)
    # Beside the project, not in it: in the build context it would change the image every run.
    override_file = folder.parent / "test-host.yml"
    override_file.write_text(yaml.safe_dump(override, sort_keys=False))
    stack = Stack(
        folder=folder,
        override=override_file,
        api_url=f"http://127.0.0.1:{ports['api']}",
        prefect_url=f"http://127.0.0.1:{ports['prefect']}/api",
        api_key=filled["BILLING_API_KEY"],
        admin_key=filled["ADMIN_SECRET_KEY"],
        prefect_login=filled["PREFECT_API_AUTH_STRING"],
    )
    try:
        stack.compose("up", "-d", "--build", timeout=UP_TIMEOUT_SECONDS)
        yield stack
    finally:
        stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "5", check=False)
        _drop_databases(list(names.values()))


def test_init_migrates_and_sets_up_pocketbase(stack: Stack) -> None:
    assert stack.state("init", ".State.ExitCode") == "0"
    logs = stack.compose("logs", "--no-color", "init").stdout
    assert "applied: 0001_ledger.sql" in logs
    assert "users: added fields" in logs


def test_every_long_running_service_becomes_healthy(stack: Stack) -> None:
    stack.wait_healthy(LONG_RUNNING)
    assert stack.state("alerts-watch", ".State.Status") == "running"


@pytest.fixture(scope="module")
def user(stack: Stack) -> str:
    """A user provisioned through the API (so also in PocketBase), on a $20 plan."""
    stack.wait_healthy(("api",))
    admin = {"X-Admin-Key": stack.admin_key}
    with httpx.Client(base_url=stack.api_url, timeout=HTTP_TIMEOUT_SECONDS) as api:
        product = {"id": "starter", "name": "Starter", "monthly_budget": 20}
        assert api.post("/api/admin/products", json=product, headers=admin).status_code == 201
        provision = {
            "email": "ada@example.com",
            "password": "correct horse battery",
            "product_id": "starter",
            "user_id": "ada",
        }
        response = api.post("/api/admin/provision-user", json=provision, headers=admin)
        assert response.status_code == 201, response.text
    return "ada"


def test_the_api_answers_and_checks_a_budget(stack: Stack, user: str) -> None:
    with httpx.Client(base_url=stack.api_url, timeout=HTTP_TIMEOUT_SECONDS) as api:
        health = api.get("/")
        assert health.status_code == 200 and health.json()["status"] == "ok", health.text
        check = {"user_id": user, "model": "gpt-4o", "tokens_input": 1000, "tokens_output": 500}
        response = api.post("/api/check-budget", json=check, headers={"X-API-Key": stack.api_key})
    assert response.status_code == 200, response.text
    assert response.json()["allowed"] is True


def test_prefect_refuses_a_caller_without_the_login(stack: Stack) -> None:
    stack.wait_healthy(("prefect-server",))
    response = httpx.get(f"{stack.prefect_url}/deployments/filter", timeout=HTTP_TIMEOUT_SECONDS)
    assert response.status_code == 401


def test_the_flows_are_deployed_and_a_worker_runs_a_reset(stack: Stack, user: str) -> None:
    assert stack.state("flows-deploy", ".State.ExitCode") == "0"
    stack.compose("run", "--rm", "--no-deps", "flows-deploy")  # a second deploy is safe
    stack.wait_healthy(("prefect-worker",))
    with stack.prefect() as prefect:
        deployment = prefect.get("/deployments/name/monthly-budget-reset/monthly")
        assert deployment.status_code == 200, deployment.text
        run = prefect.post(
            f"/deployments/{deployment.json()['id']}/create_flow_run",
            json={"parameters": {"force": True}},
        )
        assert run.status_code == 201, run.text
        deadline = time.monotonic() + FLOW_RUN_WAIT_SECONDS
        while (state := prefect.get(f"/flow_runs/{run.json()['id']}").json()["state"])[
            "type"
        ] not in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
            assert time.monotonic() < deadline, f"flow run still {state['type']}\n{stack.logs()}"
            time.sleep(POLL_SECONDS)
    assert state["type"] == "COMPLETED", f"{state}\n{stack.logs()}"


def test_a_restarted_api_keeps_every_acknowledged_write(stack: Stack, user: str) -> None:
    gateway = {"X-API-Key": stack.api_key}
    acknowledged = []
    with httpx.Client(base_url=stack.api_url, timeout=HTTP_TIMEOUT_SECONDS) as api:
        for number in range(USAGE_WRITES):
            usage = {
                "user_id": user,
                "model": "gpt-4o",
                "request_id": f"restart-{number}",
                "tokens_input": 10,
                "tokens_output": 20,
                "cost_total": str(COST_PER_CALL),
            }
            response = api.post("/api/log-usage", json=usage, headers=gateway)
            if response.status_code in (200, 201):
                acknowledged.append(usage["request_id"])
        before = api.get(f"/api/users/{user}/usage", headers=gateway).json()["total"]
    assert len(acknowledged) == USAGE_WRITES
    stack.compose("restart", "api")
    stack.wait_healthy(("api",))
    with httpx.Client(base_url=stack.api_url, timeout=HTTP_TIMEOUT_SECONDS) as api:
        after = api.get(f"/api/users/{user}/usage", headers=gateway).json()["total"]
    assert after == before
    assert after["requests"] == USAGE_WRITES
    assert Decimal(str(after["cost"])) == COST_PER_CALL * USAGE_WRITES
