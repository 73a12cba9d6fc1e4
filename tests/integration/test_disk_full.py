"""A disk that fills up under `billing serve` on SQLite: writes are refused whole (503), every
acknowledged one is kept, reads go on, the health check says the database fails, the log gets a
line per kind of failure with a count rather than a traceback per refused write, and writes
resume once there is room, in the same process and after a restart.

``RLIMIT_FSIZE`` on the server stands in for a full disk: past it a write fails with ``EFBIG``,
which SQLite reports as it reports ``ENOSPC`` ("database or disk is full"). It limits every
file the server writes, its log file too, which must not stop it either.
"""

from decimal import Decimal
from pathlib import Path

from integration_support import (
    BillingServer,
    api_headers,
    create_product,
    dumps,
    loads,
    log_usage,
    provision_user,
    read_only,
    serving,
    usage_body,
    user_budget,
)

FILE_BYTES_MAX = 512 * 1024
LOGS_MAX = 20_000
REFUSALS_WANTED = 3
# Refusals more once the disk is full, and the lines all of them may leave in the server's log
# (one per kind of failure, at most every few seconds; the disk they go to is the full one).
REFUSALS_MORE = 300
FAILURE_LINES_MAX = 3
COST = Decimal("0.001")
# Long ids make each usage row big, so the limit is reached in a few hundred requests.
ID_PAD = "x" * 100


def test_a_full_disk_refuses_writes_whole_and_loses_nothing_acknowledged(workdir: Path) -> None:
    database = workdir / "full-disk.db"
    full = BillingServer(workdir, database, "full-disk", file_bytes_max=FILE_BYTES_MAX)
    with serving(full) as client:
        create_product(client, "roomy", 1_000_000)
        provision_user(client, "filler", "roomy", "full-tenant")
        logged, refused = 0, 0
        for number in range(LOGS_MAX):
            body = usage_body("filler", f"fill-{number}-{ID_PAD}", COST, f"model-{ID_PAD}")
            answer = client.post("/api/log-usage", content=dumps(body), headers=api_headers())
            if answer.status_code == 201:
                logged += 1
                continue
            assert answer.status_code == 503, answer.text
            assert loads(answer)["error"] == "unavailable"
            refused += 1
            if refused == REFUSALS_WANTED:
                break
        assert refused == REFUSALS_WANTED, f"{logged} logged and the disk never filled"
        assert logged > 0
        for number in range(LOGS_MAX):
            body = usage_body("filler", f"more-{number}-{ID_PAD}", COST, f"model-{ID_PAD}")
            answer = client.post("/api/log-usage", content=dumps(body), headers=api_headers())
            if answer.status_code == 201:  # room again in the WAL, restarted after a checkpoint
                logged += 1
                continue
            assert answer.status_code == 503, answer.text
            refused += 1
            if refused == REFUSALS_WANTED + REFUSALS_MORE:
                break
        assert refused == REFUSALS_WANTED + REFUSALS_MORE
        failure_lines = [
            line for line in full.output().splitlines() if '"logger":"core.store.sqlite"' in line
        ]
        print(f"{refused} refused writes, {len(failure_lines)} log lines:")
        print("\n".join(failure_lines))
        assert 1 <= len(failure_lines) <= FAILURE_LINES_MAX
        assert "Traceback" not in full.output()
        assert user_budget(client, "filler")["used"] == logged * COST
        check = {"user_id": "filler", "cost_estimate": 1}
        answer = client.post("/api/check-budget", content=dumps(check), headers=api_headers())
        assert answer.status_code == 200 and loads(answer)["allowed"] is True
        health = client.get("/")
        assert health.status_code == 503
        assert loads(health)["database"] == "error"

        full.lift_file_size_limit()
        log_usage(client, "filler", "once-there-is-room", COST)
        logged += 1
        assert client.get("/").status_code == 200

    with serving(BillingServer(workdir, database, "after-full-disk")) as client:
        log_usage(client, "filler", "after-the-disk-filled", COST)
        assert user_budget(client, "filler")["used"] == (logged + 1) * COST
    with read_only(database) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows, used = db.execute("SELECT count(*), sum(cost) FROM usage").fetchone()
    assert rows == logged + 1
    assert used == (logged + 1) * 1_000_000
