"""`billing backup` against a running `billing serve` on SQLite, and a server started on the copy:
the copy holds what was acknowledged before it was taken, and serves as the database."""

from decimal import Decimal
from pathlib import Path

from integration_support import (
    BillingServer,
    create_product,
    database_url,
    log_usage,
    provision_user,
    run_billing,
    server_env,
    serving,
    user_budget,
)

COST = Decimal("0.25")


def test_a_backup_of_a_running_server_serves_what_was_acknowledged(workdir: Path) -> None:
    database, copy = workdir / "backed-up.db", workdir / "copies" / "copy.db"
    live = BillingServer(workdir, database, "backed-up")
    with serving(live) as client:
        create_product(client, "plan", 100)
        provision_user(client, "ann", "plan", "t1")
        for number in range(3):
            log_usage(client, "ann", f"before-{number}", COST)
        env = server_env(DATABASE_URL=database_url(database), DATA_DIR=str(live.data_dir))
        made = run_billing("backup", env, workdir, str(copy))
        assert made.returncode == 0, made.stderr
        log_usage(client, "ann", "after", COST)

    with serving(BillingServer(workdir, copy, "restored")) as client:
        assert user_budget(client, "ann")["used"] == 3 * COST
