"""`billing serve`/`migrate` as processes: gateway flow over HTTP, waitress's own refusals as
JSON, first-run keys, short keys; a flow command without Prefect installed."""

import socket
import sqlite3
import stat
import subprocess
import sys
from contextlib import closing
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import simplejson
from integration_support import (
    ADMIN_KEY,
    API_KEY,
    BillingServer,
    api_headers,
    create_product,
    database_url,
    dumps,
    loads,
    provision_user,
    run_billing,
    server_env,
    usage_body,
    user_budget,
)
from ports import free_port

from core.store.base import migration_scripts

COMMAND_WAIT_SECONDS = 20.0
RAW_READS_MAX = 100


@pytest.fixture(scope="module")
def server(launch, workdir: Path) -> BillingServer:
    return launch(workdir / "serve.db", "serve")


@pytest.fixture(scope="module")
def client(server: BillingServer):
    with server.client() as opened:
        yield opened


def test_health_answers_ok(client: httpx.Client) -> None:
    response = client.get("/")
    assert response.status_code == 200
    body = loads(response)
    assert body["status"] == "ok"
    assert body["database"] == "ok"


def test_healthcheck_exits_zero_for_a_healthy_server(server: BillingServer, workdir: Path) -> None:
    result = run_billing("healthcheck", server_env(PORT=str(server.port)), workdir)
    assert result.returncode == 0, result.stderr


def test_healthcheck_exits_one_when_nothing_answers(workdir: Path) -> None:
    result = run_billing("healthcheck", server_env(PORT=str(free_port())), workdir)
    assert result.returncode == 1
    assert "ConnectError" in result.stderr


def run_image_healthcheck(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK command, ``billing-healthcheck``, as its entry point runs it."""
    command = [sys.executable, "-c", "from service.healthcheck import main; main()"]
    return subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_image_healthcheck_answers_as_billing_healthcheck(
    server: BillingServer, workdir: Path
) -> None:
    assert run_image_healthcheck(server_env(PORT=str(server.port)), workdir).returncode == 0
    result = run_image_healthcheck(server_env(PORT=str(free_port())), workdir)
    assert result.returncode == 1
    assert "ConnectError" in result.stderr
    result = run_image_healthcheck(server_env(PORT="70000"), workdir)
    assert result.returncode == 1
    assert "PORT must be 1 to 65535" in result.stderr


def test_the_image_healthcheck_loads_nothing_of_the_service(workdir: Path) -> None:
    """It runs every 10 s in the container: the ledger, falcon, pydantic and Prefect stay out."""
    probe = (
        "import sys, service.healthcheck as h; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('core', 'api', 'flows', 'adapters', 'falcon', 'pydantic', 'prefect')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=workdir, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_gateway_flow_with_exact_figures(client: httpx.Client) -> None:
    product = create_product(client, "starter", Decimal("10"))
    assert product == {"id": "starter", "name": "Starter", "monthly_budget": 10}
    user = provision_user(client, "usr_flow", "starter", "tenant_flow")["user"]
    assert user["id"] == "usr_flow"
    assert user["status"] == "active"
    assert user["budget"] == {"total": 10, "used": 0, "remaining": 10}
    assert "password" not in simplejson.dumps(user)

    check = client.post(
        "/api/check-budget",
        content=dumps(
            {
                "user_id": "usr_flow",
                "model": "gpt-4o",
                "tokens_input": 100,
                "tokens_output": 200,
                "cost_estimate": Decimal("0.3"),
                "request_id": "req-flow-1",
            }
        ),
        headers=api_headers(),
    )
    assert check.status_code == 200, check.text
    checked = loads(check)
    assert checked["allowed"] is True
    assert checked["status"] == "active"
    assert checked["reservation"]["request_id"] == "req-flow-1"
    assert checked["reservation"]["amount"] == Decimal("0.3")
    assert checked["budget"] == {"total": 10, "used": 0, "remaining": Decimal("9.7")}
    assert user_budget(client, "usr_flow") == {
        "total": 10,
        "used": 0,
        "remaining": Decimal("9.7"),
        "reserved": Decimal("0.3"),
    }

    logged = client.post(
        "/api/log-usage",
        content=dumps(usage_body("usr_flow", "req-flow-1", Decimal("0.25"))),
        headers=api_headers(),
    )
    assert logged.status_code == 201, logged.text
    body = loads(logged)
    assert body["result"] == "created"
    assert body["message"] == "Usage logged and budget updated successfully"
    assert body["budget"] == {"total": 10, "used": Decimal("0.25"), "remaining": Decimal("9.75")}

    # Three more logs of 0.1 without holds: exactly 0.3 more, no float drift.
    for index in range(3):
        more = client.post(
            "/api/log-usage",
            content=dumps(usage_body("usr_flow", f"req-flow-tenth-{index}", Decimal("0.1"))),
            headers=api_headers(),
        )
        assert more.status_code == 201, more.text

    assert user_budget(client, "usr_flow") == {
        "total": 10,
        "used": Decimal("0.55"),
        "remaining": Decimal("9.45"),
        "reserved": 0,
    }

    replay = client.post(
        "/api/log-usage",
        content=dumps(usage_body("usr_flow", "req-flow-1", Decimal("0.25"))),
        headers=api_headers(),
    )
    assert replay.status_code == 200, replay.text
    assert loads(replay)["result"] == "exists"
    assert user_budget(client, "usr_flow")["used"] == Decimal("0.55")


def _raw_exchange(port: int, request: bytes) -> tuple[int, str, dict]:
    """Send bytes httpx would refuse to send; the status, Content-Type and JSON body answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=COMMAND_WAIT_SECONDS) as sock:
        sock.sendall(request)
        received = b""
        for _ in range(RAW_READS_MAX):  # waitress closes the connection after an error
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers["Content-Type"], simplejson.loads(body)


@pytest.mark.parametrize(
    ("request_bytes", "status", "code", "message"),
    [
        (
            b"POST /api/log-usage HTTP/1.1\r\nHost: t\r\nContent-Length: 999999999\r\n\r\n",
            413,
            "payload_too_large",
            "request body exceeds 65536 bytes",
        ),
        (  # one byte over, and none of it sent: waitress buffers no body past the limit
            b"POST /api/log-usage HTTP/1.1\r\nHost: t\r\nContent-Length: 65537\r\n\r\n",
            413,
            "payload_too_large",
            "request body exceeds 65536 bytes",
        ),
        (
            b"POST /api/log-usage HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"10001\r\n"
            + b"x" * 65537
            + b"\r\n0\r\n\r\n",
            413,
            "payload_too_large",
            "request body exceeds 65536 bytes",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: twelve\r\n\r\n",
            400,
            "bad_request",
            "Bad Request: Content-Length is invalid",
        ),
        (  # waitress would quote the line, key and all
            b"GET / HTTP/1.1\r\nHost: t\r\nX-API-Key: " + API_KEY.encode() + b"\rx\r\n\r\n",
            400,
            "bad_request",
            "Bad Request: Bare CR or LF found in header line",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
            "not_implemented",
            "Not Implemented: Transfer-Encoding requested is not supported.",
        ),
    ],
)
def test_what_waitress_refuses_itself_is_answered_as_json(
    server: BillingServer, request_bytes: bytes, status: int, code: str, message: str
) -> None:
    """A body declared past BODY_BYTES_MAX is refused before it is read, like a request
    waitress cannot parse: with the API's JSON error, not waitress's plain text, and without
    echoing what was sent."""
    answered = _raw_exchange(server.port, request_bytes)
    assert answered == (status, "application/json", {"error": code, "message": message})


def test_keys_are_required_on_api_routes(client: httpx.Client) -> None:
    assert client.get("/api/users/usr_flow/budget").status_code == 401
    wrong = client.get("/api/admin/products", headers={"X-Admin-Key": API_KEY})
    assert wrong.status_code == 401
    right = client.get("/api/admin/products", headers={"X-Admin-Key": ADMIN_KEY})
    assert right.status_code == 200


def migrate_env(url: str, data_dir: Path) -> dict[str, str]:
    """The environment of a `billing migrate` on ``url``, with the test keys."""
    return server_env(
        DATABASE_URL=url,
        DATA_DIR=str(data_dir),
        BILLING_API_KEY=API_KEY,
        ADMIN_SECRET_KEY=ADMIN_KEY,
    )


def test_migrate_applies_once_then_reports_up_to_date(workdir: Path) -> None:
    db_path = workdir / "migrate" / "fresh.db"
    env = migrate_env(database_url(db_path), workdir / "migrate")
    first = run_billing("migrate", env, workdir)
    assert first.returncode == 0, first.stderr
    assert "applied" in first.stdout
    assert "0001" in first.stdout
    assert db_path.exists()

    second = run_billing("migrate", env, workdir)
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout
    assert "0001" not in second.stdout


def test_migrate_on_a_database_of_a_newer_release_names_what_it_does_not_know(
    workdir: Path,
) -> None:
    db_path = workdir / "migrate-newer" / "billing.db"
    env = migrate_env(database_url(db_path), workdir / "migrate-newer")
    assert run_billing("migrate", env, workdir).returncode == 0
    with closing(sqlite3.connect(db_path)) as connection, connection:
        connection.execute("INSERT INTO schema_migrations VALUES (99, '0099_later.sql', 0)")
    again = run_billing("migrate", env, workdir)
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stdout
    assert "does not know (0099_later.sql)" in again.stdout


def test_backup_copies_a_sqlite_database_once_and_refuses_postgresql(workdir: Path) -> None:
    folder = workdir / "backup"
    env = migrate_env(database_url(folder / "billing.db"), folder)
    assert run_billing("migrate", env, workdir).returncode == 0
    made = run_billing("backup", env, workdir, str(folder / "copy.db"))
    assert made.returncode == 0, made.stderr
    assert "backed up to" in made.stdout and "quick_check ok" in made.stdout
    with closing(sqlite3.connect(folder / "copy.db")) as copy:
        applied = copy.execute("SELECT count(*) FROM schema_migrations").fetchone()
        assert applied == (len(migration_scripts("sqlite_migrations")),)
    again = run_billing("backup", env, workdir, str(folder / "copy.db"))
    assert again.returncode == 2
    assert "exists; it is not overwritten" in again.stderr
    on_postgres = migrate_env("postgresql://billing@127.0.0.1:1/billing", folder)
    refused = run_billing("backup", on_postgres, workdir, str(folder / "pg.db"))
    assert refused.returncode == 2
    assert "pg_dump" in refused.stderr


def test_migrate_on_postgresql_applies_once_then_reports_up_to_date(
    postgres, workdir: Path
) -> None:
    env = migrate_env(postgres.new_schema(), workdir / "migrate-pg")
    first = run_billing("migrate", env, workdir)
    assert first.returncode == 0, first.stderr
    assert "applied: 0001_ledger.sql" in first.stdout
    second = run_billing("migrate", env, workdir)
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout


# `billing` with Prefect made unimportable, as after `make serve` (which installs no flows extra).
WITHOUT_PREFECT = (
    "import sys; sys.modules['prefect'] = None; from service.cli import main; main(sys.argv[1:])"
)


@pytest.mark.parametrize("command", ["reset", "reconcile"])
def test_a_flow_command_without_prefect_says_what_to_install(workdir: Path, command: str) -> None:
    env = server_env(
        DATABASE_URL=database_url(workdir / "no-prefect" / "billing.db"),
        DATA_DIR=str(workdir / "no-prefect"),
        BILLING_API_KEY=API_KEY,
        ADMIN_SECRET_KEY=ADMIN_KEY,
    )
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_PREFECT, command],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=COMMAND_WAIT_SECONDS,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "needs Prefect" in result.stderr and "cloudfreedom-billing[flows]" in result.stderr


def refused_start(workdir: Path, command: str, **settings: str) -> subprocess.CompletedProcess:
    """`billing <command>` with these settings and the test keys, which must stop it at once:
    status 2 and a line saying why, no traceback."""
    env = server_env(**{"BILLING_API_KEY": API_KEY, "ADMIN_SECRET_KEY": ADMIN_KEY, **settings})
    refused = run_billing(command, env, workdir)
    assert refused.returncode == 2, refused.stderr
    assert "Traceback" not in refused.stderr
    return refused


def test_a_database_url_that_cannot_connect_stops_start_up_naming_it(workdir: Path) -> None:
    refused = refused_start(
        workdir,
        "migrate",
        DATABASE_URL="postgresql://billing:s3cret-pw@127.0.0.1:1/billing",
        DATA_DIR=str(workdir / "unreachable"),
    )
    assert "DATABASE_URL" in refused.stderr
    assert "s3cret-pw" not in refused.stderr + refused.stdout


def test_a_sqlite_file_that_is_not_a_database_stops_start_up_naming_it(workdir: Path) -> None:
    notes = workdir / "notes.txt"
    notes.write_text("not a database\n" * 100)
    refused = refused_start(
        workdir,
        "serve",
        DATABASE_URL=f"sqlite:///{notes}",
        DATA_DIR=str(workdir / "not-a-database"),
    )
    assert f"DATABASE_URL: cannot open {notes}: file is not a database" in refused.stderr


def test_a_port_already_taken_stops_start_up_naming_it(workdir: Path) -> None:
    with socket.create_server(("0.0.0.0", 0)) as taken:
        port = taken.getsockname()[1]
        refused = refused_start(
            workdir,
            "serve",
            PORT=str(port),
            DATABASE_URL=f"sqlite:///{workdir / 'port-taken.db'}",
            DATA_DIR=str(workdir / "port-taken"),
        )
    assert f"cannot listen on 0.0.0.0:{port}: Address already in use" in refused.stderr


def test_first_run_without_keys_generates_a_private_key_file(launch, workdir: Path) -> None:
    server = launch(workdir / "keyless.db", "keyless", keys=False)
    keys_path = server.data_dir / "keys.json"
    assert keys_path.exists()
    assert stat.S_IMODE(keys_path.stat().st_mode) == 0o600
    kept = simplejson.loads(keys_path.read_text())
    api_key, admin_key = kept["billing_api_key"], kept["admin_secret_key"]
    assert len(api_key) >= 16 and len(admin_key) >= 16
    assert api_key != admin_key

    with server.client() as client:
        products = client.get("/api/admin/products", headers={"X-Admin-Key": admin_key})
        assert products.status_code == 200, products.text
        budget = client.get("/api/users/nobody/budget", headers={"X-API-Key": api_key})
        assert budget.status_code == 404, budget.text
        stale = client.get("/api/admin/products", headers={"X-Admin-Key": ADMIN_KEY})
        assert stale.status_code == 401

    server.stop()
    output = server.output()
    assert str(keys_path) in output
    assert api_key not in output
    assert admin_key not in output

    # A restart keeps the same keys: they are generated once, never replaced.
    again = launch(workdir / "keyless.db", "keyless-again", keys=False, data_dir=server.data_dir)
    with again.client() as client:
        products = client.get("/api/admin/products", headers={"X-Admin-Key": admin_key})
        assert products.status_code == 200, products.text
    again.stop()
    assert simplejson.loads(keys_path.read_text()) == kept
    assert api_key not in again.output() and admin_key not in again.output()


@pytest.mark.parametrize("short_variable", ["BILLING_API_KEY", "ADMIN_SECRET_KEY"])
def test_short_key_is_refused_at_start(workdir: Path, short_variable: str) -> None:
    result = refused_start(
        workdir,
        "serve",
        PORT=str(free_port()),
        HOST="127.0.0.1",
        DATABASE_URL=database_url(workdir / "short-key.db"),
        DATA_DIR=str(workdir / "short-key"),
        **{short_variable: "fifteen-chars15"},  # one character short of the minimum
    )
    assert short_variable in result.stderr
    assert "16" in result.stderr
    assert "fifteen-chars15" not in result.stdout + result.stderr
