"""The supervisor's restart budget: a worker that keeps dying stops the whole server (status 1)."""

import logging
import socket
import sys
from pathlib import Path

from service.supervisor import WORKER_RESTARTS_MAX, Supervisor

# Stands in for a worker that fails at start (bad database, bad configuration): exits at once.
FAILING_WORKER = (sys.executable, "-c", "raise SystemExit(3)")


def test_a_worker_that_keeps_dying_stops_the_server_after_the_restart_budget(
    tmp_path: Path, caplog
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener, caplog.at_level(logging.INFO):
        supervisor = Supervisor(listener, tmp_path, 2, worker_command=FAILING_WORKER)
        assert supervisor.run() == 1
    started = [record for record in caplog.records if record.getMessage().startswith("started")]
    assert len(started) == 2 + WORKER_RESTARTS_MAX
    gave_up = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(gave_up) == 1
    assert "exited with status 3" in gave_up[0].getMessage()
