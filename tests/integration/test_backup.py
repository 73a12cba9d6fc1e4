"""`billing backup` against a running `billing serve` on SQLite, and a server started on the copy:
the copy holds what was acknowledged before it was taken, and serves as the database."""

import subprocess
from decimal import Decimal
from pathlib import Path

from integration_support import (
    BillingServer,
    api_headers,
    billing_command,
    create_product,
    database_url,
    dumps,
    provision_user,
    server_env,
    usage_body,
    user_budget,
)

COST = Decimal("0.25")
COMMAND_WAIT_SECONDS = 60


def test_a_backup_of_a_running_server_serves_what_was_acknowledged(workdir: Path) -> None:
    database, copy = workdir / "backed-up.db", workdir / "copies" / "copy.db"
    live = BillingServer(workdir, database, "backed-up")
    try:
        live.wait_ready()
        with live.client() as client:
            create_product(client, "plan", 100)
            provision_user(client, "ann", "plan", "t1")
            for number in range(3):
                body = dumps(usage_body("ann", f"before-{number}", COST))
                answer = client.post("/api/log-usage", content=body, headers=api_headers())
                assert answer.status_code == 201, answer.text
            made = subprocess.run(
                billing_command("backup", str(copy)),
                env=server_env(DATABASE_URL=database_url(database), DATA_DIR=str(live.data_dir)),
                cwd=workdir,
                capture_output=True,
                text=True,
                timeout=COMMAND_WAIT_SECONDS,
                check=False,
            )
            assert made.returncode == 0, made.stderr
            body = dumps(usage_body("ann", "after", COST))
            answer = client.post("/api/log-usage", content=body, headers=api_headers())
            assert answer.status_code == 201, answer.text
    finally:
        live.stop()

    restored = BillingServer(workdir, copy, "restored")
    try:
        restored.wait_ready()
        with restored.client() as client:
            assert user_budget(client, "ann")["used"] == 3 * COST
    finally:
        restored.stop()
