"""`billing dev` started as an operator would, on free ports: every part answers, a user
provisioned through the worker (the runbook's command) gets the invite in the mail sink, and
Ctrl-C (SIGINT) stops every process."""

import mailbox
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from ports import free_port

PROJECT_DIR = Path(__file__).resolve().parents[2]
# Prefect's server and worker start in 20-60 s on a busy 2-core machine; a flow run through the
# worker is a fresh process (~10 s).
STACK_READY_SECONDS_MAX = 300
STOP_SECONDS_MAX = 60
ADMIN_KEY = "dev-admin-key-aaaaaaaaaaaa"


def write_env(folder: Path) -> tuple[Path, dict[str, int]]:
    ports = {name: free_port() for name in ("api", "prefect", "pocketbase", "smtp")}
    text = f"""HOST=127.0.0.1
PORT={ports["api"]}
WORKERS=1
BILLING_API_KEY=dev-api-key-kkkkkkkkkkkkk
ADMIN_SECRET_KEY={ADMIN_KEY}
DATA_DIR={folder / "data"}
DATABASE_URL=sqlite:///{folder / "data" / "billing.db"}
PREFECT_API_URL=http://127.0.0.1:{ports["prefect"]}/api
POCKETBASE_URL=http://127.0.0.1:{ports["pocketbase"]}
POCKETBASE_ADMIN_EMAIL=root@example.com
POCKETBASE_ADMIN_PASSWORD=pocketbase-password-for-tests
SMTP_HOST=127.0.0.1
SMTP_PORT={ports["smtp"]}
SMTP_SECURITY=INSECURE
MAIL_FROM=billing@example.com
ADMIN_EMAIL=admin@example.com
APP_URL=http://127.0.0.1:{ports["pocketbase"]}
"""
    env_file = folder / ".env"
    env_file.write_text(text, "utf-8")
    return env_file, ports


def read_until(process: subprocess.Popen, marker: str, seconds: float) -> list[str]:
    deadline, lines = time.monotonic() + seconds, []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if marker in line:
            return lines
    raise AssertionError(f"no {marker!r} in {lines}; see the logs under DATA_DIR/logs")


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_billing_dev_runs_the_stack_provisions_through_the_worker_and_stops_on_ctrl_c(
    tmp_path,
):
    env_file, ports = write_env(tmp_path)
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("PREFECT_")
    }
    stack = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "dev", "--env-file", str(env_file)],
        cwd=PROJECT_DIR,
        env=environment | {"PYTHONPATH": str(PROJECT_DIR)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines = read_until(stack, "Mail sink:", STACK_READY_SECONDS_MAX)
        text = "\n".join(lines)
        assert f"API:              http://127.0.0.1:{ports['api']}" in text
        assert f"Prefect UI:       http://127.0.0.1:{ports['prefect']}" in text
        assert f"PocketBase admin: http://127.0.0.1:{ports['pocketbase']}/_/" in text
        admin = {"X-Admin-Key": ADMIN_KEY}
        api = f"http://127.0.0.1:{ports['api']}"
        product = {"id": "starter", "name": "Starter", "monthly_budget": 20}
        assert (
            httpx.post(f"{api}/api/admin/products", json=product, headers=admin).status_code == 201
        )

        prefect_env = environment | {"PREFECT_API_URL": f"http://127.0.0.1:{ports['prefect']}/api"}
        run = subprocess.run(
            [sys.executable, "-m", "prefect", "deployment", "run", "provision-user/provision-user"]
            + ["-p", "email=ada@example.com", "-p", "product_id=starter", "--watch"],
            env=prefect_env,
            capture_output=True,
            text=True,
            timeout=STACK_READY_SECONDS_MAX,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        found = httpx.get(
            f"{api}/api/admin/users", params={"email": "ada@example.com"}, headers=admin
        )
        assert found.status_code == 200 and found.json()["product_id"] == "starter"
        [invite] = mailbox.Maildir(tmp_path / "data" / "mail").values()
        assert invite["To"] == "ada@example.com"
        assert (
            f"Sign in at http://127.0.0.1:{ports['pocketbase']}"
            in invite.get_payload(decode=True).decode()
        )
    finally:
        stack.send_signal(signal.SIGINT)
        rest, _ = stack.communicate(timeout=STOP_SECONDS_MAX)
    assert stack.returncode == 0, rest
    assert "billing dev: stopped" in rest
    assert not any(listening(port) for port in ports.values())
